// Monitoring Metrics Publisher for the function app's identity on its Application Insights component only: with
// local authentication off, telemetry is accepted only with an Entra token of a principal holding this role
// (Learn, "Microsoft Entra authentication for Application Insights"; the official Flex Consumption samples grant it
// the same way).

param componentName string
param principalId string

var monitoringMetricsPublisher = '3913510d-42f4-4e42-8a64-420c390055eb'

resource component 'Microsoft.Insights/components@2020-02-02' existing = {
  name: componentName
}

resource publisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(component.id, principalId, monitoringMetricsPublisher)
  scope: component
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', monitoringMetricsPublisher)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}
