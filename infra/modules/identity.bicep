// The platform identity: a user-assigned identity the Functions platform uses on the app's behalf before the
// app's own code runs. It fetches the Flex Consumption package from the deployment container and resolves the
// Key Vault reference of the client secret. It is created first, and its roles are assigned before the function
// app exists, so they have had the whole deployment to propagate when one deploy uploads the package (a role that
// is minutes old makes that upload fail with BlobUploadFailedException / 403 from storage).
// The tool itself (FHIR, state tables, payload blobs, telemetry) runs as the app's system-assigned identity.

param name string
param location string
param tags object

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: name
  location: location
  tags: tags
}

output id string = identity.id
output principalId string = identity.properties.principalId
