#!/usr/bin/env bash
# Run by the template's deployment script (and usable by hand): downloads the release package and zip-deploys
# it to the function app. Environment: PACKAGE_URI, APP_NAME, RESOURCE_GROUP.
set -euo pipefail
: "${PACKAGE_URI:?set PACKAGE_URI to the release zip URL}"
: "${APP_NAME:?set APP_NAME to the function app name}"
: "${RESOURCE_GROUP:?set RESOURCE_GROUP to the function app resource group}"
curl --fail --silent --show-error --location --retry 5 --output package.zip "$PACKAGE_URI"
# A package without host.json at its root would deploy and then serve no functions.
if ! unzip -l package.zip | awk '{print $4}' | grep -qx host.json; then
  echo "$PACKAGE_URI is not a fhir-migration-tool package (no host.json at its root)"
  exit 1
fi
az functionapp deployment source config-zip --resource-group "$RESOURCE_GROUP" --name "$APP_NAME" --src package.zip
