// fhir-migration-tool: everything one migration needs, in one resource group, least privilege.
//
//   state storage (tables chunk/export, payload blobs, host storage; no shared keys)
//   Linux function app running the custom handler (Flex Consumption by default), system-assigned identity
//   workspace-based App Insights + Log Analytics, the dashboard and the alert rules
//   FHIR data roles on the source and destination, in their own subscriptions and resource groups
//   Key Vault for the source client secret (client-credential mode only)
//   optional private networking for the state storage
//
// This file is the human-edited source; main.json is the ARM form the Deploy-to-Azure button and the CLI use.

targetScope = 'resourceGroup'

@description('Short prefix for every resource name: 1-6 lower-case letters or digits (a leading digit is fine: the Key Vault name starts with "kv-"). A unique suffix is added.')
@minLength(1)
@maxLength(6)
param prefix string = 'mig'

@description('Region of the tool\'s resources.')
param location string = resourceGroup().location

@description('AzureAPIforFhir: Azure API for FHIR to an AHDS FHIR service. FhirService: AHDS FHIR service to another.')
@allowed([
  'AzureAPIforFhir'
  'FhirService'
])
param typeOfMigration string = 'AzureAPIforFhir'

@description('Source when typeOfMigration is AzureAPIforFhir: resource id of the Azure API for FHIR (/subscriptions/…/providers/Microsoft.HealthcareApis/services/<name>).')
param apiForFhirId string = ''

@description('Source when typeOfMigration is FhirService: resource id of the AHDS FHIR service (…/workspaces/<ws>/fhirservices/<name>).')
param sourceFhirServiceId string = ''

@description('Destination: resource id of the AHDS FHIR service (…/workspaces/<ws>/fhirservices/<name>).')
@minLength(1)
param fhirServiceId string

@description('Source base URL. Managed identity: empty for the server\'s own URL. Client secret: required (nothing reads the source\'s Azure resource in that mode).')
param sourceFhirUrl string = ''

@description('Token audience of the source (the tool asks for <audience>/.default). Managed identity: empty for the server\'s configured audience. Client secret: empty for sourceFhirUrl.')
param sourceAudience string = ''

@description('Destination base URL; empty: the server\'s own URL (tokens are still requested for the server\'s configured audience).')
param destinationFhirUrl string = ''

@description('Migrate every version, not only the current one.')
param exportWithHistory bool = true

@description('Migrate deleted resources (soft deletes) too.')
param exportWithDelete bool = true

@description('One system-level export per window (true), or one export per resource type (false).')
param isParallel bool = true

@description('Export de-identified data with the anonymization config named by configFile.')
param exportDeidentified bool = false

@description('Anonymization config blob in the export account\'s "anonymization" container (see infra/Anonymization).')
param configFile string = ''

@description('Pause new exports daily between startTime and endTime (UTC hours).')
param pauseDm bool = false

@minValue(0)
@maxValue(23)
param startTime int = 8

@minValue(0)
@maxValue(23)
param endTime int = 17

@description('Migrate only data last updated between startDate and endDate.')
param specificRun bool = false

@description('ISO 8601, e.g. 2020-01-01T00:00:00Z; empty: from the oldest data.')
param startDate string = ''

@description('ISO 8601; empty: up to now, continuously.')
param endDate string = ''

@description('Call the source with a client secret (an app registration in the source\'s tenant) instead of the managed identity. No deployment then touches the source: its URL and audience are parameters, and its roles are granted by an administrator of its tenant (docs/deploy.md).')
param useClientCredentials bool = false

param clientId string = ''

param tenantId string = ''

@description('Stored in Key Vault; the app setting only references it.')
@secure()
param clientSecret string = ''

@description('FlexConsumption: cheapest, scales to zero. Premium (EP1) and Dedicated (B1): always-on instances.')
@allowed([
  'FlexConsumption'
  'Premium'
  'Dedicated'
])
param hostingPlan string = 'FlexConsumption'

@description('The release package the app runs: by default the release matching this template\'s version. Upgrading is changing this URL (docs/deploy.md). Empty: the template deploys no code (azd deploys it itself).')
param packageUri string = 'https://github.com/fhir-migration-tool/fhir-migration-tool/releases/download/v0.1.0/released-package.zip'

@description('default: create the Key Vault (client-credential mode). recover: take back the soft-deleted vault of an earlier deployment of this prefix in this resource group (30 days after teardown).')
@allowed([
  'default'
  'recover'
])
param keyVaultCreateMode string = 'default'

@description('Reach the state storage through private endpoints only (VNet integration, private DNS zones).')
param enablePrivateNetworking bool = false

@description('Address space of the VNet created when enablePrivateNetworking is on.')
param vnetAddressPrefix string = '10.60.0.0/16'

@description('Subnet (inside vnetAddressPrefix) for the function app\'s outbound traffic.')
param vnetIntegrationSubnetPrefix string = '10.60.0.0/24'

@description('Subnet (inside vnetAddressPrefix) for the private endpoints.')
param vnetEndpointsSubnetPrefix string = '10.60.1.0/24'

@description('Email notified by the alert rules; empty: no notification.')
param alertEmail string = ''

@description('Alert when no window has been committed for this many hours, once the first one has. Only the windows the alert service accepts and that leave room for the 2-day look-back.')
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

@description('false (default): Application Insights takes Entra-authenticated telemetry only (the app\'s identity is Monitoring Metrics Publisher). true: the connection string\'s instrumentation key is accepted too.')
param appInsightsLocalAuth bool = false

@description('Time range of the dashboard tiles that show recent activity.')
@allowed([
  'P1D'
  'P7D'
  'P30D'
  'P90D'
])
param dashboardTimeRange string = 'P7D'

@description('Days Log Analytics keeps the telemetry.')
@minValue(30)
@maxValue(730)
param logRetentionDays int = 90

@description('NCRONTAB schedule of MigrationOrchestrator, which starts exports.')
param migrationStarterCron string = '0 */5 * * * *'

@description('More app settings (AZURE_*), applied last; see the README\'s settings table.')
param functionAppCustomSettings object = {}

var tags = {
  AppID: 'fhir-migration-tool'
}
var cleanPrefix = toLower(replace(replace(prefix, '-', ''), '_', ''))
var suffix = take(uniqueString(resourceGroup().id, prefix), 6)
var base = '${cleanPrefix}${suffix}'
var isFlex = hostingPlan == 'FlexConsumption'
var isPremium = hostingPlan == 'Premium'
// Client-secret mode never reads or changes the source's Azure resource: it may be in another tenant.
var sourceId = useClientCredentials ? '' : (typeOfMigration == 'AzureAPIforFhir' ? apiForFhirId : sourceFhirServiceId)
var sourceParts = split(sourceId, '/')
var sourceKnown = length(sourceParts) > 8
var sourceName = sourceKnown ? sourceParts[8] : 'none'
var sourceSubscription = sourceKnown ? sourceParts[2] : subscription().subscriptionId
var sourceGroup = sourceKnown ? sourceParts[4] : resourceGroup().name
var destinationParts = split(fhirServiceId, '/')

// Invalid dates fail the deployment here rather than the migration later.
var checkedStartDate = empty(startDate) ? '' : dateTimeAdd(startDate, 'PT0S')
var checkedEndDate = empty(endDate) ? '' : dateTimeAdd(endDate, 'PT0S')

var fhirDataExporter = '3db33094-8700-4567-8da5-1501d4e7e843'
var fhirDataImporter = '4465e953-8ced-4406-a58e-0f6e3f3b530b'
var fhirDataReader = '4c8d0bbc-75d3-4935-991f-5f3c56d81508'
var fhirDataWriter = '3f88fce4-5892-4214-ae73-ba5294559913'
// Control-plane Reader on each FHIR resource only: preflight reads their export and import configuration.
var reader = 'acdd72a7-3385-48ef-bd42-f606fba81ae7'
var storageBlobDataContributor = 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'

module identity 'modules/identity.bicep' = {
  name: 'identity-${suffix}'
  params: {
    name: '${base}-platform'
    location: location
    tags: tags
  }
}

module storage 'modules/storage.bicep' = {
  name: 'storage-${suffix}'
  params: {
    name: '${base}state'
    location: location
    tags: tags
    containers: isFlex ? ['app-package'] : []
    privateOnly: enablePrivateNetworking
  }
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring-${suffix}'
  params: {
    namePrefix: base
    location: location
    tags: tags
    retentionDays: logRetentionDays
    localAuth: appInsightsLocalAuth
  }
}

// Flex Consumption: the platform identity may write the package to the deployment container, assigned before the
// app exists (see identity.bicep).
module platformRoles 'modules/storage-roles.bicep' = if (isFlex) {
  name: 'platform-roles-${suffix}'
  params: {
    storageName: storage.outputs.name
    principalId: identity.outputs.principalId
    roles: [
      storageBlobDataContributor
    ]
    container: 'app-package'
  }
}

module content 'modules/content-storage.bicep' = if (isPremium) {
  name: 'content-${suffix}'
  params: {
    name: '${base}content'
    location: location
    tags: tags
  }
}

resource contentAccount 'Microsoft.Storage/storageAccounts@2025-06-01' existing = {
  name: '${base}content'
}

module network 'modules/network.bicep' = if (enablePrivateNetworking) {
  name: 'network-${suffix}'
  params: {
    namePrefix: base
    location: location
    tags: tags
    storageId: storage.outputs.id
    flex: isFlex
    addressPrefix: vnetAddressPrefix
    integrationPrefix: vnetIntegrationSubnetPrefix
    endpointsPrefix: vnetEndpointsSubnetPrefix
  }
}

module functionApp 'modules/functionapp.bicep' = {
  name: 'functionapp-${suffix}'
  params: {
    appName: '${base}-fhirmig'
    planName: '${base}-plan'
    location: location
    tags: tags
    hostingPlan: hostingPlan
    storageName: storage.outputs.name
    storageBlobEndpoint: storage.outputs.blobEndpoint
    integrationSubnetId: enablePrivateNetworking ? network!.outputs.integrationSubnetId : ''
    appSettings: [for setting in items(settings): { name: setting.key, value: setting.value }]
    platformIdentityId: identity.outputs.id
  }
  // Storage private endpoints (and their DNS) exist before the app starts reaching storage through them; the
  // platform identity's roles exist before the app is created.
  dependsOn: [
    network
    platformRoles
    content
  ]
}

module sourceRoles 'modules/fhir-roles.bicep' = if (!useClientCredentials) {
  name: 'source-fhir-roles-${suffix}'
  scope: resourceGroup(sourceSubscription, sourceGroup)
  params: {
    fhirId: sourceId
    principalId: functionApp.outputs.principalId
    roles: [
      fhirDataExporter
      fhirDataReader
      reader
    ]
  }
}

module destinationRoles 'modules/fhir-roles.bicep' = {
  name: 'destination-fhir-roles-${suffix}'
  scope: resourceGroup(destinationParts[2], destinationParts[4])
  params: {
    fhirId: fhirServiceId
    principalId: functionApp.outputs.principalId
    roles: [
      fhirDataImporter
      fhirDataWriter
      fhirDataReader
      reader
    ]
  }
}

module vault 'modules/keyvault.bicep' = if (useClientCredentials) {
  name: 'keyvault-${suffix}'
  params: {
    // Key Vault names start with a letter; the prefix may start with a digit.
    name: 'kv-${base}'
    createMode: keyVaultCreateMode
    location: location
    tags: tags
    clientSecret: clientSecret
    readerPrincipalId: identity.outputs.principalId
  }
}

module insightsRoles 'modules/insights-roles.bicep' = if (!appInsightsLocalAuth) {
  name: 'insights-roles-${suffix}'
  params: {
    componentName: monitoring.outputs.appInsightsName
    principalId: functionApp.outputs.principalId
  }
}

module dashboard 'modules/dashboard.bicep' = {
  name: 'dashboard-${suffix}'
  params: {
    name: '${base}-dashboard'
    displayName: 'FHIR migration (${base})'
    location: location
    appInsightsId: monitoring.outputs.appInsightsId
    timeRange: dashboardTimeRange
    tags: tags
  }
}

module alerts 'modules/alerts.bicep' = {
  name: 'alerts-${suffix}'
  params: {
    namePrefix: base
    location: location
    appInsightsId: monitoring.outputs.appInsightsId
    alertEmail: alertEmail
    noProgressHours: noProgressHours
    tags: tags
  }
}

// The servers' own URL and configured audience, read from their resources in their own subscriptions (nothing is
// changed there by these reads). Not in client-secret mode, whose source may be in another tenant.
resource sourceApiForFhir 'Microsoft.HealthcareApis/services@2024-03-31' existing = {
  name: sourceName
  scope: resourceGroup(sourceSubscription, sourceGroup)
}

resource sourceWorkspace 'Microsoft.HealthcareApis/workspaces@2024-03-31' existing = {
  name: sourceName
  scope: resourceGroup(sourceSubscription, sourceGroup)
}

resource sourceFhirService 'Microsoft.HealthcareApis/workspaces/fhirservices@2024-03-31' existing = {
  parent: sourceWorkspace
  name: last(sourceParts)
}

resource destinationWorkspace 'Microsoft.HealthcareApis/workspaces@2024-03-31' existing = {
  name: destinationParts[8]
  scope: resourceGroup(destinationParts[2], destinationParts[4])
}

resource destinationFhirService 'Microsoft.HealthcareApis/workspaces/fhirservices@2024-03-31' existing = {
  parent: destinationWorkspace
  name: last(destinationParts)
}

// An audience need not be a URL (an application id URI such as api://…): the URL is then not derived from it and
// must be passed (sourceFhirUrl, destinationFhirUrl).
var sourceConfiguredAudience = typeOfMigration == 'AzureAPIforFhir' ? sourceApiForFhir.properties.authenticationConfiguration.audience : sourceFhirService.properties.authenticationConfiguration.audience
var sourceAudienceIsUrl = startsWith(sourceConfiguredAudience, 'https://')
// Azure API for FHIR answers at https://<name>.<service domain>; the service domain is the audience's host once any
// "<name>." is taken off (no cloud suffix written here). An AHDS FHIR service's audience is its URL.
var sourceAudienceHost = sourceAudienceIsUrl ? split(sourceConfiguredAudience, '/')[2] : ''
var sourceOwnUrl = !sourceAudienceIsUrl ? '' : (typeOfMigration == 'AzureAPIforFhir' ? 'https://${startsWith(sourceAudienceHost, '${sourceName}.') ? sourceAudienceHost : '${sourceName}.${sourceAudienceHost}'}' : sourceConfiguredAudience)
var destinationConfiguredAudience = destinationFhirService.properties.authenticationConfiguration.audience
var destinationOwnUrl = startsWith(destinationConfiguredAudience, 'https://') ? destinationConfiguredAudience : ''

// Flex Consumption sets the runtime through functionAppConfig and rejects these settings. Premium and Dedicated
// run the package zip deploy puts on the app (Learn: zip deployment with WEBSITE_RUN_FROM_PACKAGE=1); Premium
// keeps it in its Azure Files content share.
var runtimeSettings = isFlex ? {} : union({
  FUNCTIONS_EXTENSION_VERSION: '~4'
  FUNCTIONS_WORKER_RUNTIME: 'custom'
  WEBSITE_RUN_FROM_PACKAGE: '1'
}, isPremium ? {
  WEBSITE_CONTENTAZUREFILECONNECTIONSTRING: 'DefaultEndpointsProtocol=https;AccountName=${base}content;EndpointSuffix=${environment().suffixes.storage};AccountKey=${contentAccount.listKeys().keys[0].value}'
  WEBSITE_CONTENTSHARE: '${base}-fhirmig'
} : {})

var coreSettings = {
  AzureWebJobsStorage__accountName: storage.outputs.name
  APPLICATIONINSIGHTS_CONNECTION_STRING: monitoring.outputs.connectionString
  AZURE_StagingStorageUri: storage.outputs.tableEndpoint
  AZURE_BlobStorageUri: storage.outputs.blobEndpoint
  AZURE_SourceUri: useClientCredentials || !empty(sourceFhirUrl) ? sourceFhirUrl : sourceOwnUrl
  AZURE_DestinationUri: empty(destinationFhirUrl) ? destinationOwnUrl : destinationFhirUrl
  AZURE_SourceAudience: !empty(sourceAudience) ? sourceAudience : (useClientCredentials ? sourceFhirUrl : sourceConfiguredAudience)
  AZURE_DestinationAudience: destinationConfiguredAudience
  AZURE_ExportWithHistory: string(exportWithHistory)
  AZURE_ExportWithDelete: string(exportWithDelete)
  AZURE_IsParallel: string(isParallel)
  AZURE_IsExportDeidentified: string(exportDeidentified)
  AZURE_PauseDm: string(pauseDm)
  AZURE_StartTime: string(startTime)
  AZURE_EndTime: string(endTime)
  AZURE_SpecificRun: string(specificRun)
  AZURE_DestinationResourceId: fhirServiceId
  AZURE_ResourceManagerUri: environment().resourceManager
  AZURE_MaxExportRetriesEnabled: 'true'
  AZURE_MaxExportRetries: '5'
  MigrationStarterCron: migrationStarterCron
  ExportStatusCron: '*/30 * * * * *'
  ImportStatusCron: '*/30 * * * * *'
  VerificationCron: '0 */1 * * * *'
}

// Settings that only exist when their feature is used: an empty value would read as "set". The preflight reads the
// source's export configuration through Azure Resource Manager as the app's identity (not in client-secret mode);
// Entra-only ingestion makes the Functions host and the handler send telemetry with the app's identity.
var optionalSettings = union(
  empty(configFile) ? {} : { AZURE_ConfigFile: configFile },
  empty(checkedStartDate) ? {} : { AZURE_StartDate: checkedStartDate },
  empty(checkedEndDate) ? {} : { AZURE_EndDate: checkedEndDate },
  useClientCredentials ? {} : { AZURE_SourceResourceId: sourceId },
  appInsightsLocalAuth ? {} : { APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'Authorization=AAD' },
  useClientCredentials ? {
    AZURE_ClientCredential: 'true'
    AZURE_ClientId: clientId
    AZURE_TenantId: tenantId
    AZURE_ClientSecret: vault!.outputs.secretReference
  } : {}
)

var settings = union(runtimeSettings, coreSettings, optionalSettings, functionAppCustomSettings)

resource site 'Microsoft.Web/sites@2024-11-01' existing = {
  name: '${base}-fhirmig'
}

// Code, the way Learn documents it for each plan ("Automate resource deployment for your function app",
// Deployment sources). Last, after everything else, so that the roles it relies on have had the whole deployment
// to propagate.
//   Flex Consumption: one deploy from packageUri (a package named released-package.zip); the platform writes it to
//   the deployment container as the platform identity and syncs the triggers.
resource oneDeploy 'Microsoft.Web/sites/extensions@2024-11-01' = if (isFlex && !empty(packageUri)) {
  parent: site
  name: 'onedeploy'
  properties: {
    packageUri: packageUri
    remoteBuild: false
  }
  dependsOn: [
    functionApp
    network
    sourceRoles
    destinationRoles
    insightsRoles
    dashboard
    alerts
  ]
}

//   Premium and Dedicated: zip deployment from packageUri, run from the package (WEBSITE_RUN_FROM_PACKAGE=1).
resource zipDeploy 'Microsoft.Web/sites/extensions@2024-11-01' = if (!isFlex && !empty(packageUri)) {
  parent: site
  name: 'ZipDeploy'
  properties: {
    packageUri: packageUri
  }
  dependsOn: [
    functionApp
    network
    sourceRoles
    destinationRoles
    insightsRoles
    dashboard
    alerts
  ]
}

output functionAppName string = functionApp.outputs.name
output functionAppPrincipalId string = functionApp.outputs.principalId
output appInsightsName string = monitoring.outputs.appInsightsName
output dashboardName string = dashboard.outputs.dashboardName
output storageAccountName string = storage.outputs.name
