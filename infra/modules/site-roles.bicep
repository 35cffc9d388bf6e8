// Roles for one principal on the function app only (the code deployer's right to deploy to this app).

param siteName string
param principalId string
param roles array

resource site 'Microsoft.Web/sites@2024-11-01' existing = {
  name: siteName
}

resource assignments 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for role in roles: {
    name: guid(site.id, principalId, role)
    scope: site
    properties: {
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role)
      principalId: principalId
      principalType: 'ServicePrincipal'
    }
  }
]
