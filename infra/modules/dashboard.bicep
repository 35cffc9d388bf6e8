// The migration dashboard. Every log tile queries the App Insights component's classic schema (customEvents,
// customDimensions), so the tool's events appear as the original tool's dashboard expected them. Each tile's KQL
// lives in its own file under infra/dashboard/queries; a test checks every event and property they use against
// the events the code sends (src/telemetry/contract.rs).
//
// Fixes over the original's dashboard: no hard-coded resource ids; one time range (the `timeRange` parameter)
// for every tile that shows recent activity, while counts and progress cover the whole migration (their queries
// carry their own range); the running-exports count excludes failed exports; failures without a started event
// still show; tiles that are always empty on a custom handler (availability, web tests, Windows performance
// counters) are gone; no leftover titles.

@description('Dashboard resource name; unique within the resource group.')
@minLength(3)
@maxLength(64)
param name string = 'fhirmig-dashboard-${uniqueString(resourceGroup().id)}'

@description('Title shown in the portal.')
param displayName string = 'FHIR migration'

param location string = resourceGroup().location

@description('Resource id of the Application Insights component the tool reports to.')
param appInsightsId string

@description('Time range of the tiles showing recent activity. Counts and progress always cover the whole migration.')
@allowed([
  'P1D'
  'P7D'
  'P30D'
  'P90D'
])
param timeRange string = 'P7D'

param tags object = {}

var rangeMilliseconds = {
  P1D: 86400000
  P7D: 604800000
  P30D: 2592000000
  P90D: 7776000000
}

// x, y, w, h: grid position and size. whole: the query sets its own range (whole migration). chart/series: a
// chart tile and the column it plots.
var tiles = [
  { x: 0, y: 2, w: 4, h: 2, title: 'Migration status', subtitle: 'Data migrated till', whole: true, chart: '', series: '', query: loadTextContent('../dashboard/queries/migration-status.kql') }
  { x: 4, y: 2, w: 8, h: 2, title: 'Migration progress', subtitle: 'Migrated through vs now, lag in hours', whole: true, chart: '', series: '', query: loadTextContent('../dashboard/queries/migration-progress.kql') }
  { x: 0, y: 4, w: 3, h: 2, title: 'Completed exports', subtitle: 'Whole migration', whole: true, chart: '', series: '', query: loadTextContent('../dashboard/queries/completed-exports-count.kql') }
  { x: 3, y: 4, w: 3, h: 2, title: 'Completed imports', subtitle: 'Whole migration', whole: true, chart: '', series: '', query: loadTextContent('../dashboard/queries/completed-imports-count.kql') }
  { x: 6, y: 4, w: 3, h: 2, title: 'Running exports', subtitle: 'Started, not completed or failed', whole: true, chart: '', series: '', query: loadTextContent('../dashboard/queries/running-exports-count.kql') }
  { x: 9, y: 4, w: 3, h: 2, title: 'Running imports', subtitle: 'Started, not completed or failed', whole: true, chart: '', series: '', query: loadTextContent('../dashboard/queries/running-imports-count.kql') }
  { x: 12, y: 4, w: 3, h: 2, title: 'Failed exports', subtitle: 'In the time range', whole: false, chart: '', series: '', query: loadTextContent('../dashboard/queries/failed-exports-count.kql') }
  { x: 15, y: 4, w: 3, h: 2, title: 'Failed imports', subtitle: 'In the time range', whole: false, chart: '', series: '', query: loadTextContent('../dashboard/queries/failed-imports-count.kql') }
  { x: 0, y: 6, w: 9, h: 4, title: 'Resources migrated per hour', subtitle: 'Versions imported', whole: false, chart: 'StackedColumn', series: 'Resources', query: loadTextContent('../dashboard/queries/resources-per-hour.kql') }
  { x: 9, y: 6, w: 9, h: 4, title: 'Windows per day', subtitle: 'Windows committed (skipped empty ranges included)', whole: false, chart: 'StackedColumn', series: 'Windows', query: loadTextContent('../dashboard/queries/windows-per-day.kql') }
  { x: 0, y: 10, w: 9, h: 4, title: 'Running exports', subtitle: 'Details', whole: true, chart: '', series: '', query: loadTextContent('../dashboard/queries/running-exports.kql') }
  { x: 9, y: 10, w: 9, h: 4, title: 'Running imports', subtitle: 'Details', whole: true, chart: '', series: '', query: loadTextContent('../dashboard/queries/running-imports.kql') }
  { x: 0, y: 14, w: 9, h: 4, title: 'Completed exports', subtitle: 'Details', whole: false, chart: '', series: '', query: loadTextContent('../dashboard/queries/completed-exports.kql') }
  { x: 9, y: 14, w: 9, h: 4, title: 'Completed imports', subtitle: 'Details', whole: false, chart: '', series: '', query: loadTextContent('../dashboard/queries/completed-imports.kql') }
  { x: 0, y: 18, w: 9, h: 4, title: 'Failed exports', subtitle: 'Details and reasons', whole: false, chart: '', series: '', query: loadTextContent('../dashboard/queries/failed-exports.kql') }
  { x: 9, y: 18, w: 9, h: 4, title: 'Failed imports', subtitle: 'Details and reasons', whole: false, chart: '', series: '', query: loadTextContent('../dashboard/queries/failed-imports.kql') }
  { x: 0, y: 22, w: 9, h: 4, title: 'Import errors per window', subtitle: 'Lines the destination refused, by kind', whole: false, chart: '', series: '', query: loadTextContent('../dashboard/queries/import-errors.kql') }
  { x: 9, y: 22, w: 9, h: 4, title: 'Export and import resources', subtitle: 'Per import', whole: false, chart: '', series: '', query: loadTextContent('../dashboard/queries/export-import-resources.kql') }
  { x: 0, y: 26, w: 6, h: 3, title: 'Total resource count', subtitle: 'Source and destination, latest', whole: true, chart: '', series: '', query: loadTextContent('../dashboard/queries/total-resource-count.kql') }
  { x: 6, y: 26, w: 6, h: 3, title: 'Retry latch', subtitle: 'Halts and resets', whole: true, chart: '', series: '', query: loadTextContent('../dashboard/queries/retry-latch.kql') }
  { x: 12, y: 26, w: 6, h: 3, title: 'Skipped ranges', subtitle: 'Empty at the source, no export needed', whole: false, chart: '', series: '', query: loadTextContent('../dashboard/queries/skipped-windows.kql') }
  { x: 0, y: 29, w: 6, h: 4, title: 'Surface check', subtitle: 'Results', whole: false, chart: '', series: '', query: loadTextContent('../dashboard/queries/surface-check.kql') }
  { x: 6, y: 29, w: 6, h: 4, title: 'Deep check', subtitle: 'Results', whole: false, chart: '', series: '', query: loadTextContent('../dashboard/queries/deep-check.kql') }
  { x: 12, y: 29, w: 6, h: 4, title: 'Full check', subtitle: 'Every version compared', whole: false, chart: '', series: '', query: loadTextContent('../dashboard/queries/full-check.kql') }
  { x: 0, y: 37, w: 18, h: 2, title: 'Progress and ETA', subtitle: 'Versions of the source total, rate over the last hour, hours to caught up', whole: true, chart: '', series: '', query: loadTextContent('../dashboard/queries/progress-and-eta.kql') }
  { x: 0, y: 33, w: 18, h: 4, title: 'Unresolved import failures', subtitle: 'Versions not at the destination (failure ledger)', whole: true, chart: '', series: '', query: loadTextContent('../dashboard/queries/unresolved-import-failures.kql') }
]

// The inputs every log tile has, and the ones only chart tiles add (built apart and joined: older Bicep parsers,
// such as the one checkov uses, take no array literals inside function calls).
var gridInputs = [
  for t in tiles: [
    { name: 'resourceTypeMode', isOptional: true, value: 'components' }
    { name: 'ComponentId', isOptional: true, value: appInsightsId }
    { name: 'Scope', isOptional: true, value: { resourceIds: [appInsightsId] } }
    { name: 'PartId', isOptional: true, value: guid(name, t.title, t.subtitle) }
    { name: 'Version', isOptional: true, value: '2.0' }
    { name: 'TimeRange', isOptional: true, value: timeRange }
    { name: 'IsQueryContainTimeRange', isOptional: true, value: t.whole }
    { name: 'Query', isOptional: true, value: t.query }
    { name: 'PartTitle', isOptional: true, value: t.title }
    { name: 'PartSubTitle', isOptional: true, value: t.subtitle }
    { name: 'ControlType', isOptional: true, value: empty(t.chart) ? 'AnalyticsGrid' : 'FrameControlChart' }
  ]
]

var noInputs = []

var chartInputs = [
  for t in tiles: [
    { name: 'SpecificChart', isOptional: true, value: t.chart }
    {
      name: 'Dimensions'
      isOptional: true
      value: {
        xAxis: { name: 'timestamp', type: 'datetime' }
        yAxis: [{ name: t.series, type: 'long' }]
        splitBy: []
        aggregation: 'Sum'
      }
    }
    { name: 'LegendOptions', isOptional: true, value: { isEnabled: true, position: 'Bottom' } }
  ]
]

var logParts = [
  for (t, i) in tiles: {
    position: { x: t.x, y: t.y, colSpan: t.w, rowSpan: t.h }
    metadata: {
      type: 'Extension/Microsoft_OperationsManagementSuite_Workspace/PartType/LogsDashboardPart'
      inputs: concat(gridInputs[i], empty(t.chart) ? noInputs : chartInputs[i])
      settings: {
        content: {
          PartTitle: t.title
          PartSubTitle: t.subtitle
        }
      }
    }
  }
]

// Platform metrics of the same component: requests come from the Functions host, dependencies and exceptions
// from the tool itself (every FHIR and storage call, every failed invocation or job).
var metricTiles = [
  { x: 0, y: 39, title: 'Failed invocations', chartType: 3, metrics: [{ name: 'requests/failed', aggregation: 7, label: 'Failed invocations' }] }
  { x: 6, y: 39, title: 'Invocation duration', chartType: 2, metrics: [{ name: 'requests/duration', aggregation: 4, label: 'Average duration' }] }
  { x: 12, y: 39, title: 'Exceptions and dependency failures', chartType: 3, metrics: [
      { name: 'exceptions/count', aggregation: 7, label: 'Exceptions' }
      { name: 'dependencies/failed', aggregation: 7, label: 'Failed FHIR and storage calls' }
    ] }
  { x: 0, y: 43, title: 'FHIR and storage call duration', chartType: 2, metrics: [{ name: 'dependencies/duration', aggregation: 4, label: 'Average duration' }] }
  { x: 6, y: 43, title: 'FHIR and storage calls', chartType: 3, metrics: [{ name: 'dependencies/count', aggregation: 7, label: 'Calls' }] }
]

var metricParts = [
  for m in metricTiles: {
    position: { x: m.x, y: m.y, colSpan: 6, rowSpan: 4 }
    metadata: {
      type: 'Extension/HubsExtension/PartType/MonitorChartPart'
      inputs: [
        { name: 'options', isOptional: true }
        { name: 'sharedTimeRange', isOptional: true }
      ]
      settings: {
        content: {
          options: {
            chart: {
              title: m.title
              titleKind: 2
              metrics: [
                for metric in m.metrics: {
                  resourceMetadata: { id: appInsightsId }
                  name: metric.name
                  aggregationType: metric.aggregation
                  namespace: 'microsoft.insights/components'
                  metricVisualization: { displayName: metric.label }
                }
              ]
              visualization: {
                chartType: m.chartType
                legendVisualization: { isVisible: true, position: 2, hideSubtitle: false }
                axisVisualization: {
                  x: { isVisible: true, axisType: 2 }
                  y: { isVisible: true, axisType: 1 }
                }
              }
              timespan: { relative: { duration: rangeMilliseconds[timeRange] }, showUTCTime: true, grain: 1 }
            }
          }
        }
      }
    }
  }
]

var reminder = '''## Before and after cut-over
- **Custom search parameters** are copied once, at the start. Any added later must be created on the destination by hand.
- **Run `$reindex`** on the destination after the migration, so custom search parameters index the migrated data.
- **Cut over** when *Migration progress* shows a lag you can accept, nothing is running or failed, and the last **Full check** passed. See the README's Operate section for the runbook.
'''

// Multi-line strings take no interpolation; format() fills in the time range.
var guide = format(
  '''## Reading this dashboard
Counts, progress and running jobs cover **the whole migration**. Details, charts and checks cover the **{0}** time range chosen at deployment.
Alerts (if deployed) fire on failed exports or imports, on the retry latch, when no window is committed for hours, and on a failed verification.
''',
  timeRange
)

var markdownParts = [
  {
    position: { x: 0, y: 0, colSpan: 9, rowSpan: 2 }
    metadata: {
      type: 'Extension/HubsExtension/PartType/MarkdownPart'
      inputs: []
      settings: { content: { settings: { content: reminder, title: '', subtitle: '', markdownSource: 1 } } }
    }
  }
  {
    position: { x: 9, y: 0, colSpan: 9, rowSpan: 2 }
    metadata: {
      type: 'Extension/HubsExtension/PartType/MarkdownPart'
      inputs: []
      settings: { content: { settings: { content: guide, title: '', subtitle: '', markdownSource: 1 } } }
    }
  }
]

resource dashboard 'Microsoft.Portal/dashboards@2020-09-01-preview' = {
  name: name
  location: location
  tags: union(tags, { 'hidden-title': displayName })
  properties: {
    lenses: [
      {
        order: 0
        parts: concat(markdownParts, logParts, metricParts)
      }
    ]
    metadata: {
      model: {
        timeRange: {
          value: { relative: { duration: rangeMilliseconds[timeRange] / 3600000, timeUnit: 1 } }
          type: 'MsPortalFx.Composition.Configuration.ValueTypes.TimeRange'
        }
      }
    }
  }
}

output dashboardId string = dashboard.id
output dashboardName string = dashboard.name
