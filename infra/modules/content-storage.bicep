// Premium (Elastic Premium) only: the account holding the app's Azure Files content share. Learn documents that an
// Elastic Premium app keeps its code in an Azure Files share named by WEBSITE_CONTENTAZUREFILECONNECTIONSTRING and
// WEBSITE_CONTENTSHARE ("Automate resource deployment for your function app", Premium plan; "Storage
// considerations"), and Azure Files takes no identity-based connection, so this account keeps shared keys on.
// It is a separate account on purpose: it holds only the code, while the state account (tables, import payloads,
// host storage) keeps shared keys off. The trade-off is stated in docs/deploy.md (Hosting plans).

@description('3-24 lower-case letters and digits.')
@minLength(3)
@maxLength(24)
param name string
param location string
param tags object

resource account 'Microsoft.Storage/storageAccounts@2025-06-01' = {
  // checkov:skip=CKV_AZURE_59: public network access stays on: Elastic Premium mounts the content share over the public endpoint, and the account holds only the code package, behind its key
  // checkov:skip=CKV_AZURE_35: Elastic Premium mounts its content share over the public endpoint unless the content share is routed through a VNet with its own private endpoints; the account holds only the code package, behind its key
  // checkov:skip=CKV_AZURE_43: the name is a parameter checkov cannot evaluate; it is bounded to 3-24 characters and built lower-case from letters and digits
  // checkov:skip=CKV_AZURE_206: LRS on purpose: the content share holds only the code package, which zip deploy puts back on every deployment
  // checkov:skip=CKV_AZURE_33: no queues are used in this account; it only holds the Azure Files content share
  // checkov:skip=CKV2_AZURE_40: shared keys are what Azure Files content shares require (no identity-based connection); this account holds only the code package
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
    allowSharedKeyAccess: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
  }
}

output id string = account.id
output name string = account.name
