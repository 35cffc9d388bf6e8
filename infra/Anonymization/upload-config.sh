#!/usr/bin/env bash
# Uploads a de-identification (anonymizer) config to the `anonymization` container of the export storage account,
# under the name the tool will request, then checks that the blob is there.
#
# Usage: ./upload-config.sh --account <export storage account> [--file DemoTruncate.json] [--dry-run]
# Needs: the Azure CLI, logged in (`az login`), with Storage Blob Data Contributor on that account.
# Then set AZURE_IsExportDeidentified=true and AZURE_ConfigFile to the name printed below.
set -euo pipefail

account=""
file="$(dirname "$0")/DemoTruncate.json"
dry_run=false
while [ $# -gt 0 ]; do
  case "$1" in
    --account) account="$2"; shift 2 ;;
    --file) file="$2"; shift 2 ;;
    --dry-run) dry_run=true; shift ;;
    *) echo "unknown argument: $1 (usage: see the header of $0)"; exit 2 ;;
  esac
done

# The tool requests `_anonymizationConfig=<file name without directories and .json>.json`.
stem="$(basename "$file")"
stem="${stem%.json}"
blob="$stem.json"
echo "config:           $file"
echo "blob:             anonymization/$blob"
echo "AZURE_ConfigFile: $blob"
if [ "$dry_run" = true ]; then
  exit 0
fi
if [ -z "$account" ]; then
  echo "--account is required (the storage account the source exports to)"; exit 2
fi
if [ ! -f "$file" ]; then
  echo "$file does not exist"; exit 2
fi
python3 -m json.tool "$file" >/dev/null || { echo "$file is not valid JSON"; exit 2; }
command -v az >/dev/null || { echo "the Azure CLI (az) is not installed"; exit 2; }
az account show >/dev/null || { echo "not logged in: run az login"; exit 2; }

az storage container create --account-name "$account" --name anonymization --auth-mode login --output none
az storage blob upload --account-name "$account" --container-name anonymization --name "$blob" \
  --file "$file" --overwrite --auth-mode login --output none
exists="$(az storage blob exists --account-name "$account" --container-name anonymization --name "$blob" \
  --auth-mode login --query exists --output tsv)"
if [ "$exists" != "true" ]; then
  echo "the upload did not leave anonymization/$blob in $account"; exit 1
fi
echo "uploaded: set AZURE_IsExportDeidentified=true and AZURE_ConfigFile=$blob on the function app"
