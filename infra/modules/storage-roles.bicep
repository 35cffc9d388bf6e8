// Data-plane roles for one principal on the tool's storage account, or on one of its blob containers only. A
// module, so the assignment name can include the principal id (known only once the identity exists): recreating
// the identity then never collides.

param storageName string
param principalId string
param roles array
@description('A blob container of the account to scope the roles to; empty: the whole account.')
param container string = ''

resource storage 'Microsoft.Storage/storageAccounts@2025-06-01' existing = {
  name: storageName
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2025-06-01' existing = {
  parent: storage
  name: 'default'
}

resource scopedContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2025-06-01' existing = {
  parent: blobService
  name: empty(container) ? 'none' : container
}

resource onAccount 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for role in (empty(container) ? roles : []): {
    name: guid(storage.id, principalId, role)
    scope: storage
    properties: {
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role)
      principalId: principalId
      principalType: 'ServicePrincipal'
    }
  }
]

resource onContainer 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for role in (empty(container) ? [] : roles): {
    name: guid(scopedContainer.id, principalId, role)
    scope: scopedContainer
    properties: {
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role)
      principalId: principalId
      principalType: 'ServicePrincipal'
    }
  }
]
