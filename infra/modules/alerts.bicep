// Alert rules on the tool's custom events, with an action group that emails the operator. Each rule's KQL lives
// in infra/alerts; a test checks every event and property it uses against the events the code sends.
//
// The original shipped no alerts, although its guide asks operators to check for failures daily.

@description('Prefix of the rule and action group names.')
@minLength(2)
@maxLength(40)
param namePrefix string = 'fhirmig'

param location string = resourceGroup().location

@description('Resource id of the Application Insights component the tool reports to.')
param appInsightsId string

@description('Who is emailed when a rule fires. Empty: the rules are created and show in the portal, but notify nobody.')
param alertEmail string = ''

@description('Fire "no progress" when no window has been committed for this many hours, once one has. Set it above the longest pause window and the MigrationStarterCron interval.')
// A log search alert's window must be one of 5, 10, 15, 30, 45, 60, 120, 180, 240, 300, 360, 1440 or 2880 minutes:
// the service refuses any other ("Supported granularities are: …", Azure/azure-rest-api-specs#21258;
// hashicorp/terraform-provider-azurerm#18886). 48 hours is left out: the rule looks back 2 days (the service's
// longest query range) to tell a migration that has not committed its first window yet from one that stopped.
@allowed([
  1
  2
  3
  4
  5
  6
  24
])
param noProgressHours int = 6

@description('Create the rules enabled. Disable after cut-over, when the tool is stopped on purpose.')
param alertsEnabled bool = true

param tags object = {}

resource actionGroup 'Microsoft.Insights/actionGroups@2023-01-01' = if (!empty(alertEmail)) {
  name: '${namePrefix}-operators'
  location: 'global'
  tags: tags
  properties: {
    groupShortName: 'fhirmig'
    enabled: true
    emailReceivers: [
      {
        name: 'operator'
        emailAddress: alertEmail
        useCommonAlertSchema: true
      }
    ]
  }
}

// operator/threshold: on the number of rows the query returns in the window.
var rules = [
  {
    key: 'job-failed'
    displayName: 'FHIR migration: an export or import failed'
    description: 'An $export or $import job failed or was refused. The tool retries it; check the FailureReason (dashboard: Failed exports / Failed imports).'
    severity: 1
    frequency: 'PT15M'
    window: 'PT15M'
    lookback: ''
    operator: 'GreaterThan'
    threshold: 0
    query: loadTextContent('../alerts/export-or-import-failed.kql')
  }
  {
    key: 'retry-latch'
    displayName: 'FHIR migration: halted by the retry latch'
    description: 'Exports or imports failed too many times in a row and the migration has stopped. Fix the cause (export table, FailureReason column), then call ClearMaxExportRetries_Http.'
    severity: 0
    frequency: 'PT15M'
    window: 'PT15M'
    lookback: ''
    operator: 'GreaterThan'
    threshold: 0
    query: loadTextContent('../alerts/retry-latch-reached.kql')
  }
  {
    key: 'no-progress'
    displayName: 'FHIR migration: no progress'
    description: 'No window has been committed for ${noProgressHours} hours. Check that the function app runs, the dashboard\'s running jobs, and the MigrationStatus_Http function.'
    severity: 2
    frequency: 'PT1H'
    window: 'PT${noProgressHours}H'
    // The query sees 2 days: it stays quiet until the first window has been committed.
    lookback: 'P2D'
    operator: 'LessThan'
    threshold: 1
    query: 'let window = ${noProgressHours}h;\n${loadTextContent('../alerts/no-progress.kql')}'
  }
  {
    key: 'import-failure'
    displayName: 'FHIR migration: a resource version could not be imported'
    description: 'The destination refused a resource version for good (a conflicting version, an invalid resource). It is not migrated until someone fixes the cause and runs failures retry, or accepts the loss with failures accept (dashboard: Unresolved import failures).'
    severity: 1
    frequency: 'PT15M'
    window: 'PT15M'
    lookback: ''
    operator: 'GreaterThan'
    threshold: 0
    query: loadTextContent('../alerts/permanent-import-failure.kql')
  }
  {
    key: 'verification-failed'
    displayName: 'FHIR migration: verification found differences'
    description: 'A surface, deep or full check found a difference between source and destination (dashboard: Surface / Deep / Full check).'
    severity: 2
    frequency: 'PT15M'
    window: 'PT15M'
    lookback: ''
    operator: 'GreaterThan'
    threshold: 0
    query: loadTextContent('../alerts/verification-failed.kql')
  }
]

resource alertRules 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = [
  for rule in rules: {
    name: '${namePrefix}-${rule.key}'
    location: location
    tags: tags
    properties: {
      displayName: rule.displayName
      description: rule.description
      severity: rule.severity
      enabled: alertsEnabled
      scopes: [appInsightsId]
      evaluationFrequency: rule.frequency
      windowSize: rule.window
      overrideQueryTimeRange: empty(rule.lookback) ? null : rule.lookback
      criteria: {
        allOf: [
          {
            query: rule.query
            timeAggregation: 'Count'
            operator: rule.operator
            threshold: rule.threshold
            failingPeriods: {
              numberOfEvaluationPeriods: 1
              minFailingPeriodsToAlert: 1
            }
          }
        ]
      }
      autoMitigate: false
      actions: {
        actionGroups: empty(alertEmail) ? [] : [actionGroup.id]
      }
    }
  }
]

output ruleNames array = [for (rule, i) in rules: alertRules[i].name]
