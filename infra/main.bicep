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

@description('Source base URL; empty: the server\'s own URL (tokens are still requested for the server\'s configured audience).')
param sourceFhirUrl string = ''

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

@description('Call the source with a client secret (an app registration in the source\'s tenant) instead of the managed identity.')
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

@description('The release zip (scripts/package) the app runs, put on the app by one deploy on every deployment.')
param packageUri string = 'https://github.com/fhir-migration-tool/fhir-migration-tool/releases/latest/download/fhir-migration-tool.zip'

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

@description('Alert when no window has been committed for this many hours.')
@minValue(1)
@maxValue(48)
param noProgressHours int = 6

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
var sourceId = typeOfMigration == 'AzureAPIforFhir' ? apiForFhirId : sourceFhirServiceId
var sourceParts = split(sourceId, '/')
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
  }
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
  }
  // Storage private endpoints (and their DNS) exist before the app starts reaching storage through them.
  dependsOn: [
    network
  ]
}

module sourceRoles 'modules/fhir-roles.bicep' = {
  name: 'source-fhir-roles-${suffix}'
  scope: resourceGroup(sourceParts[2], sourceParts[4])
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
    readerPrincipalId: functionApp.outputs.principalId
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

// Flex Consumption sets the runtime through functionAppConfig and rejects these settings. The package is put on
// the app by one deploy on every plan (below), not by WEBSITE_RUN_FROM_PACKAGE.
var runtimeSettings = isFlex ? {} : {
  FUNCTIONS_EXTENSION_VERSION: '~4'
  FUNCTIONS_WORKER_RUNTIME: 'custom'
}

var coreSettings = {
  AzureWebJobsStorage__accountName: storage.outputs.name
  APPLICATIONINSIGHTS_CONNECTION_STRING: monitoring.outputs.connectionString
  AZURE_StagingStorageUri: storage.outputs.tableEndpoint
  AZURE_BlobStorageUri: storage.outputs.blobEndpoint
  AZURE_SourceUri: empty(sourceFhirUrl) ? sourceRoles.outputs.url : sourceFhirUrl
  AZURE_DestinationUri: empty(destinationFhirUrl) ? destinationRoles.outputs.url : destinationFhirUrl
  AZURE_SourceAudience: sourceRoles.outputs.audience
  AZURE_DestinationAudience: destinationRoles.outputs.audience
  AZURE_ExportWithHistory: string(exportWithHistory)
  AZURE_ExportWithDelete: string(exportWithDelete)
  AZURE_IsParallel: string(isParallel)
  AZURE_IsExportDeidentified: string(exportDeidentified)
  AZURE_PauseDm: string(pauseDm)
  AZURE_StartTime: string(startTime)
  AZURE_EndTime: string(endTime)
  AZURE_SpecificRun: string(specificRun)
  AZURE_SourceResourceId: sourceId
  AZURE_DestinationResourceId: fhirServiceId
  AZURE_ResourceManagerUri: environment().resourceManager
  AZURE_MaxExportRetriesEnabled: 'true'
  AZURE_MaxExportRetries: '5'
  MigrationStarterCron: migrationStarterCron
  ExportStatusCron: '*/30 * * * * *'
  ImportStatusCron: '*/30 * * * * *'
  VerificationCron: '0 */1 * * * *'
}

// Settings that only exist when their feature is used: an empty value would read as "set".
var optionalSettings = union(
  empty(configFile) ? {} : { AZURE_ConfigFile: configFile },
  empty(checkedStartDate) ? {} : { AZURE_StartDate: checkedStartDate },
  empty(checkedEndDate) ? {} : { AZURE_EndDate: checkedEndDate },
  useClientCredentials ? {
    AZURE_ClientCredential: 'true'
    AZURE_ClientId: clientId
    AZURE_TenantId: tenantId
    AZURE_ClientSecret: vault!.outputs.secretReference
  } : {}
)

resource site 'Microsoft.Web/sites@2024-11-01' existing = {
  name: '${base}-fhirmig'
}

resource appSettings 'Microsoft.Web/sites/config@2024-11-01' = {
  // These checks read site configuration (logging, auth, framework, storage mounts); this resource holds only app settings.
  // checkov:skip=CKV_AZURE_66: not site configuration; failed-request tracing does not apply to a custom handler's timer functions
  // checkov:skip=CKV_AZURE_63: not site configuration; invocations are logged to Application Insights
  // checkov:skip=CKV_AZURE_65: not site configuration; detailed error pages do not apply to a custom handler
  // checkov:skip=CKV_AZURE_80: no .NET Framework: the app is a Rust custom handler
  // checkov:skip=CKV_AZURE_13: App Service Authentication would block the Functions host's key-based admin calls; the HTTP functions require function keys
  // checkov:skip=CKV_AZURE_88: no Azure Files: Flex Consumption runs from its package container, the other plans from the package URL
  // checkov:skip=CKV_AZURE_222: not site configuration; see the function app module
  parent: site
  name: 'appsettings'
  properties: union(runtimeSettings, coreSettings, optionalSettings, functionAppCustomSettings)
  dependsOn: [
    functionApp
  ]
}

// One deploy (Learn: "Automate resource deployment for your function app"): the platform fetches packageUri and
// deploys it, then syncs the triggers; a PUT on every template deployment, so a new package at the same URL is
// picked up by redeploying. After the app settings (the handler reads them at start), the storage roles (Flex
// writes the package to its container as the app's identity) and the private endpoints.
resource codeDeploy 'Microsoft.Web/sites/extensions@2024-11-01' = {
  parent: site
  name: 'onedeploy'
  properties: {
    packageUri: packageUri
    remoteBuild: false
  }
  dependsOn: [
    appSettings
    functionApp
    network
  ]
}

output functionAppName string = functionApp.outputs.name
output functionAppPrincipalId string = functionApp.outputs.principalId
output appInsightsName string = monitoring.outputs.appInsightsName
output dashboardName string = dashboard.outputs.dashboardName
output storageAccountName string = storage.outputs.name
