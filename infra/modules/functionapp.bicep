// The Linux function app that runs the custom handler, its plan, and its system-assigned identity's roles on the
// tool's storage account. Every app setting arrives with the site, in siteConfig.appSettings (Learn, "Automate
// resource deployment for your function app": define application settings as a siteConfig/appSettings collection,
// so they exist when the site is created); main.bicep computes them without this app's identity.
//
// Plans: Flex Consumption (FC1, default) is the cheapest plan that runs custom handlers on Linux and scales to
// zero; Linux Consumption is closed to new apps. Premium (EP1) and Dedicated (B1) are there for VNet-heavy or
// always-warm set-ups.

param appName string
param planName string
param location string
param tags object
@allowed([
  'FlexConsumption'
  'Premium'
  'Dedicated'
])
param hostingPlan string
param storageName string
param storageBlobEndpoint string
@description('Subnet for outbound VNet integration; empty: none.')
param integrationSubnetId string = ''
@description('Every app setting, as name/value pairs.')
param appSettings array
@description('Resource id of the platform identity (identity.bicep): Flex deployment storage and Key Vault references.')
param platformIdentityId string

var isFlex = hostingPlan == 'FlexConsumption'
var kind = {
  FlexConsumption: 'functionapp'
  Premium: 'elastic'
  Dedicated: 'linux'
}
var sku = {
  FlexConsumption: { name: 'FC1', tier: 'FlexConsumption' }
  Premium: { name: 'EP1', tier: 'ElasticPremium' }
  Dedicated: { name: 'B1', tier: 'Basic' }
}

// Storage roles for the app's identity, at the account only: the Functions host keeps timer locks as blobs
// (Storage Blob Data Owner is its documented minimum, which also covers the payload blobs and the Flex package),
// and the state lives in tables.
var storageBlobDataOwner = 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
var storageTableDataContributor = '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'

// Flex Consumption: the runtime and the package container are properties of the app, not app settings.
var flexConfig = {
  deployment: {
    storage: {
      type: 'blobContainer'
      value: '${storageBlobEndpoint}app-package'
      // The platform identity, whose role on this container was assigned before the app was created.
      authentication: {
        type: 'UserAssignedIdentity'
        userAssignedIdentityResourceId: platformIdentityId
      }
    }
  }
  scaleAndConcurrency: {
    maximumInstanceCount: 40
    instanceMemoryMB: 512
  }
  runtime: {
    name: 'custom'
    version: '1.0'
  }
}

// Flex Consumption refuses ftpsState, linuxFxVersion, alwaysOn and vnetRouteAllEnabled (Learn, "App settings
// reference", Flex Consumption plan deprecations; ARM error 51021): it gets only what it accepts. Flex routes all
// outbound traffic through its integration subnet anyway.
var flexSiteConfig = {
  minTlsVersion: '1.2'
  http20Enabled: true
}
var classicSiteConfig = {
  minTlsVersion: '1.2'
  http20Enabled: true
  ftpsState: 'Disabled'
  linuxFxVersion: ''
  alwaysOn: hostingPlan == 'Dedicated'
  vnetRouteAllEnabled: !empty(integrationSubnetId)
}

resource plan 'Microsoft.Web/serverfarms@2024-11-01' = {
  // checkov:skip=CKV_AZURE_225: zone redundancy needs several always-on instances; the tool is a resumable poller whose state is in storage, so an outage only delays the next tick
  name: planName
  location: location
  tags: tags
  // Flex Consumption 'functionapp', Elastic Premium 'elastic', a Linux App Service (Dedicated) plan 'linux'.
  kind: kind[hostingPlan]
  sku: sku[hostingPlan]
  properties: {
    reserved: true
  }
}

resource site 'Microsoft.Web/sites@2024-11-01' = {
  // checkov:skip=CKV_AZURE_222: the admin HTTP functions need a function key and are called by operators from outside; timers need no inbound access at all
  // checkov:skip=CKV_AZURE_17: client certificates would lock out the portal and curl callers of the key-protected admin functions
  // checkov:skip=CKV_AZURE_212: one instance is enough: overlapping or missed ticks are harmless (every state change is ETag-guarded and the next tick resumes)
  // checkov:skip=CKV_AZURE_15: minTlsVersion 1.2 is set in both flexSiteConfig and classicSiteConfig, which checkov cannot follow through the plan condition
  // checkov:skip=CKV_AZURE_18: http20Enabled is true in both flexSiteConfig and classicSiteConfig (chosen by plan; checkov cannot follow the condition)
  // checkov:skip=CKV_AZURE_67: as CKV_AZURE_18: HTTP/2 is on for every plan, set through the per-plan siteConfig variables
  // checkov:skip=CKV_AZURE_78: FTP: classicSiteConfig sets ftpsState Disabled; Flex Consumption has no FTP and refuses the property; basic publishing credentials are off for both
  // checkov:skip=CKV_AZURE_16: the app has a system-assigned identity (the tool's) and a user-assigned one (the platform's); checkov only recognizes the type SystemAssigned
  // checkov:skip=CKV_AZURE_213: the platform's health check would call an HTTP function without a key (401); the handler's own readiness is checked by the Functions host
  name: appName
  location: location
  // azd finds the app it deploys to by this tag (azure.yaml's service name).
  tags: union(tags, { 'azd-service-name': 'migration' })
  kind: 'functionapp,linux'
  identity: {
    type: 'SystemAssigned, UserAssigned'
    userAssignedIdentities: {
      '${platformIdentityId}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    clientCertEnabled: false
    virtualNetworkSubnetId: empty(integrationSubnetId) ? null : integrationSubnetId
    keyVaultReferenceIdentity: platformIdentityId
    siteConfig: union(isFlex ? flexSiteConfig : classicSiteConfig, { appSettings: appSettings })
    functionAppConfig: isFlex ? flexConfig : null
  }
}

// No basic-auth publishing: deployments go through Entra ID.
resource ftp 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-11-01' = {
  parent: site
  name: 'ftp'
  properties: {
    allow: false
  }
}

resource scm 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-11-01' = {
  parent: site
  name: 'scm'
  properties: {
    allow: false
  }
}

module storageRoles 'storage-roles.bicep' = {
  name: 'storage-roles-${uniqueString(site.id)}'
  params: {
    storageName: storageName
    principalId: site.identity.principalId
    roles: [
      storageBlobDataOwner
      storageTableDataContributor
    ]
  }
}

output id string = site.id
output name string = site.name
output principalId string = site.identity.principalId
output hostName string = site.properties.defaultHostName
