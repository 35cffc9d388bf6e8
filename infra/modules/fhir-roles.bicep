// Least-privilege FHIR data roles for the function app's identity, on one FHIR server, deployed into that server's
// own subscription and resource group (cross-subscription works as in the original). main.bicep reads the
// server's URL and audience itself, so nothing waits for these assignments but one deploy. Each assignment's name
// includes the principal id, so recreating the app never collides with an old assignment.

@description('Full resource id of the FHIR server: Microsoft.HealthcareApis/services/… or …/workspaces/…/fhirservices/….')
param fhirId string
@description('Principal id of the function app\'s managed identity.')
param principalId string
@description('Built-in role definition ids to assign.')
param roles array

var parts = split(fhirId, '/')
var isApiForFhir = toLower(parts[6]) == 'microsoft.healthcareapis' && toLower(parts[7]) == 'services'

resource apiForFhir 'Microsoft.HealthcareApis/services@2024-03-31' existing = {
  name: parts[8]
}

resource workspace 'Microsoft.HealthcareApis/workspaces@2024-03-31' existing = {
  name: parts[8]
}

resource fhirService 'Microsoft.HealthcareApis/workspaces/fhirservices@2024-03-31' existing = {
  parent: workspace
  name: last(parts)
}

resource onApiForFhir 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for role in (isApiForFhir ? roles : []): {
    name: guid(fhirId, principalId, role)
    scope: apiForFhir
    properties: {
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role)
      principalId: principalId
      principalType: 'ServicePrincipal'
    }
  }
]

resource onFhirService 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for role in (isApiForFhir ? [] : roles): {
    name: guid(fhirId, principalId, role)
    scope: fhirService
    properties: {
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role)
      principalId: principalId
      principalType: 'ServicePrincipal'
    }
  }
]
