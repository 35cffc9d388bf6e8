// Puts the release package on a Flex Consumption app, which runs code from its deployment container rather than
// from WEBSITE_RUN_FROM_PACKAGE: a deployment script downloads `packageUri` (following GitHub's redirect) and
// zip-deploys it with the Azure CLI, as a user-assigned identity allowed to deploy to this app only.

param namePrefix string
param location string
param tags object
param appName string
param packageUri string
@description('Changes force the script to run again (a new package at the same URL).')
param forceUpdateTag string

var websiteContributor = 'de139f84-1756-47ae-9be6-808fbbe84772'

resource site 'Microsoft.Web/sites@2024-11-01' existing = {
  name: appName
}

resource deployer 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: '${namePrefix}-deployer'
  location: location
  tags: tags
}

module canDeploy 'site-roles.bicep' = {
  name: 'deployer-roles-${uniqueString(site.id)}'
  params: {
    siteName: appName
    principalId: deployer.properties.principalId
    roles: [
      websiteContributor
    ]
  }
}

resource deploy 'Microsoft.Resources/deploymentScripts@2023-08-01' = {
  name: '${namePrefix}-deploy-code'
  location: location
  tags: tags
  kind: 'AzureCLI'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${deployer.id}': {}
    }
  }
  dependsOn: [
    canDeploy
  ]
  properties: {
    azCliVersion: '2.67.0'
    forceUpdateTag: forceUpdateTag
    retentionInterval: 'PT1H'
    cleanupPreference: 'OnSuccess'
    timeout: 'PT30M'
    environmentVariables: [
      { name: 'PACKAGE_URI', value: packageUri }
      { name: 'APP_NAME', value: appName }
      { name: 'RESOURCE_GROUP', value: resourceGroup().name }
    ]
    scriptContent: loadTextContent('../scripts/deploy-code.sh')
  }
}
