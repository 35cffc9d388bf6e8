// Holds the source's client secret (client-credential mode only), so it is never a plain app setting or a value
// in the deployment history. RBAC authorization: the platform identity (identity.bicep) reads it as Key Vault Secrets User
// when it resolves the app setting's Key Vault reference; the vault and its role exist before the app does.

@description('3-24 letters, digits and hyphens, starting with a letter (Key Vault naming rules).')
@minLength(3)
@maxLength(24)
param name string
@description('default, or recover: take back the soft-deleted vault of the same name (after a teardown).')
@allowed([
  'default'
  'recover'
])
param createMode string = 'default'
param location string
param tags object
@secure()
param clientSecret string
@description('Principal id of the identity that resolves the Key Vault reference (the platform identity).')
param readerPrincipalId string

var keyVaultSecretsUser = '4633458b-17de-408a-b874-0445c86b69e6'

resource vault 'Microsoft.KeyVault/vaults@2024-11-01' = {
  // checkov:skip=CKV_AZURE_109: App Service resolves Key Vault references from outside the vault's firewall unless the app routes through a VNet; access is by RBAC (one secret, one reader)
  // checkov:skip=CKV_AZURE_189: as above: the platform resolves the reference over the public endpoint
  name: name
  location: location
  tags: tags
  properties: {
    createMode: createMode
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 30
    enablePurgeProtection: true
    publicNetworkAccess: 'Enabled'
  }
}

resource secret 'Microsoft.KeyVault/vaults/secrets@2024-11-01' = {
  // checkov:skip=CKV_AZURE_41: the secret's lifetime is the app registration's; an arbitrary expiry here would stop the migration while the credential is still valid
  parent: vault
  name: 'source-client-secret'
  properties: {
    value: clientSecret
    contentType: 'client secret for the source FHIR server'
  }
}

resource secretReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(vault.id, readerPrincipalId, keyVaultSecretsUser)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultSecretsUser)
    principalId: readerPrincipalId
    principalType: 'ServicePrincipal'
  }
}

@description('The app-setting value that makes the platform resolve the secret from the vault.')
output secretReference string = '@Microsoft.KeyVault(SecretUri=${secret.properties.secretUri})'
