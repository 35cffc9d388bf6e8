<#
.SYNOPSIS
Uploads a de-identification (anonymizer) config to the `anonymization` container of the export storage account,
under the name the tool will request, then checks that the blob is there.

.EXAMPLE
./upload-config.ps1 -Account myexportaccount -File ./DemoTruncate.json

Needs the Azure CLI, logged in (`az login`), with Storage Blob Data Contributor on that account. Then set
AZURE_IsExportDeidentified=true and AZURE_ConfigFile to the name printed.
#>
param(
    [Parameter(Mandatory = $false)][string]$Account = "",
    [Parameter(Mandatory = $false)][string]$File = (Join-Path $PSScriptRoot "DemoTruncate.json"),
    [switch]$DryRun
)
$ErrorActionPreference = "Stop"

# The tool requests `_anonymizationConfig=<file name without directories and .json>.json`.
$stem = [System.IO.Path]::GetFileName($File)
if ($stem.EndsWith(".json")) { $stem = $stem.Substring(0, $stem.Length - 5) }
$blob = "$stem.json"
Write-Output "config:           $File"
Write-Output "blob:             anonymization/$blob"
Write-Output "AZURE_ConfigFile: $blob"
if ($DryRun) { exit 0 }
if (-not $Account) { throw "-Account is required (the storage account the source exports to)" }
if (-not (Test-Path $File)) { throw "$File does not exist" }
Get-Content $File -Raw | ConvertFrom-Json | Out-Null
if (-not (Get-Command az -ErrorAction SilentlyContinue)) { throw "the Azure CLI (az) is not installed" }
az account show --output none
if ($LASTEXITCODE -ne 0) { throw "not logged in: run az login" }

az storage container create --account-name $Account --name anonymization --auth-mode login --output none
if ($LASTEXITCODE -ne 0) { throw "could not create the anonymization container" }
az storage blob upload --account-name $Account --container-name anonymization --name $blob `
    --file $File --overwrite --auth-mode login --output none
if ($LASTEXITCODE -ne 0) { throw "the upload failed" }
$exists = az storage blob exists --account-name $Account --container-name anonymization --name $blob `
    --auth-mode login --query exists --output tsv
if ($exists -ne "true") { throw "the upload did not leave anonymization/$blob in $Account" }
Write-Output "uploaded: set AZURE_IsExportDeidentified=true and AZURE_ConfigFile=$blob on the function app"
