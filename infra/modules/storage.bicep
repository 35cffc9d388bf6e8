// The tool's own storage account: the state tables (chunk, export), the import payload blobs, the Functions
// host's storage (identity-based) and, on Flex Consumption, the deployment package container. Shared-key access
// is off: every client authenticates with the function app's managed identity.

@description('3-24 lower-case letters and digits (main.bicep builds it from the prefix, lower-cased, and a unique suffix).')
@minLength(3)
@maxLength(24)
param name string
param location string
param tags object
@description('Containers to create besides the ones the tool creates itself.')
param containers array = []
@description('Deny public network access (private endpoints are created by the network module).')
param privateOnly bool = false

resource account 'Microsoft.Storage/storageAccounts@2025-06-01' = {
  // checkov:skip=CKV_AZURE_35: the default action is Deny when private networking is on; without it, Flex Consumption reaches storage over the public endpoint (data access still needs Entra ID: shared keys are off)
  // checkov:skip=CKV_AZURE_43: the name is a parameter checkov cannot evaluate; it is bounded to 3-24 characters and built lower-case from letters and digits
  // checkov:skip=CKV_AZURE_206: LRS on purpose: the state is small and recoverable (a lost cursor only re-exports windows, and imports of the same versions are idempotent); pick ZRS/GRS yourself where the region offers it
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: 'Standard_LRS'
  }
  properties: {
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    publicNetworkAccess: privateOnly ? 'Disabled' : 'Enabled'
    networkAcls: {
      defaultAction: privateOnly ? 'Deny' : 'Allow'
      bypass: 'AzureServices'
    }
  }
}

resource tableService 'Microsoft.Storage/storageAccounts/tableServices@2025-06-01' = {
  parent: account
  name: 'default'
}

resource chunkTable 'Microsoft.Storage/storageAccounts/tableServices/tables@2025-06-01' = {
  parent: tableService
  name: 'chunk'
}

resource exportTable 'Microsoft.Storage/storageAccounts/tableServices/tables@2025-06-01' = {
  parent: tableService
  name: 'export'
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2025-06-01' = {
  parent: account
  name: 'default'
  properties: {
    deleteRetentionPolicy: {
      enabled: true
      days: 7
    }
  }
}

resource blobContainers 'Microsoft.Storage/storageAccounts/blobServices/containers@2025-06-01' = [
  for container in containers: {
    parent: blobService
    name: container
    properties: {
      publicAccess: 'None'
    }
  }
]

output id string = account.id
output name string = account.name
output blobEndpoint string = account.properties.primaryEndpoints.blob
output tableEndpoint string = account.properties.primaryEndpoints.table
output queueEndpoint string = account.properties.primaryEndpoints.queue
