// Least-privilege FHIR data roles for the function app's identity, on one FHIR server, deployed into that server's
// own subscription and resource group (cross-subscription works as in the original). Each assignment's name
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

// The token audience the server is configured with. For Azure API for FHIR it is often the shared
// https://azurehealthcareapis.com rather than the server's own URL, so it is not the URL.
var audience = isApiForFhir ? apiForFhir.properties.authenticationConfiguration.audience : fhirService.properties.authenticationConfiguration.audience
var audienceHost = split(audience, '/')[2]
// Azure API for FHIR answers at https://<name>.<service domain>; the service domain is the audience's host once any
// "<name>." is taken off (no cloud suffix written here). An AHDS FHIR service's audience is its URL.
var apiForFhirHost = startsWith(audienceHost, '${parts[8]}.') ? audienceHost : '${parts[8]}.${audienceHost}'

@description('The server\'s own base URL.')
output url string = isApiForFhir ? 'https://${apiForFhirHost}' : audience

@description('The token audience the server is configured with (the tool asks for <audience>/.default).')
output audience string = audience
