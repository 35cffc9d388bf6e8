// Workspace-based Application Insights (the classic kind the original created is retired) and its Log Analytics
// workspace. The dashboard and alerts query the component, whose classic schema (customEvents) the tool's KQL uses.

param namePrefix string
param location string
param tags object
@description('Days Log Analytics keeps the telemetry (the migration may run for months).')
@minValue(30)
@maxValue(730)
param retentionDays int = 90
@description('false (default): Entra-only ingestion, the component refuses the instrumentation key (the app sends with its identity, as Monitoring Metrics Publisher). true: the connection string\'s key is accepted too.')
param localAuth bool = false

resource workspace 'Microsoft.OperationalInsights/workspaces@2025-02-01' = {
  name: '${namePrefix}-logs'
  location: location
  tags: tags
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: retentionDays
  }
}

resource insights 'Microsoft.Insights/components@2020-02-02' = {
  name: '${namePrefix}-insights'
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: workspace.id
    IngestionMode: 'LogAnalytics'
    RetentionInDays: retentionDays
    publicNetworkAccessForIngestion: 'Enabled'
    publicNetworkAccessForQuery: 'Enabled'
    // Entra-only ingestion by default, as the official Flex Consumption samples do.
    DisableLocalAuth: !localAuth
  }
}

output appInsightsId string = insights.id
output appInsightsName string = insights.name
output connectionString string = insights.properties.ConnectionString
output workspaceId string = workspace.id
