// Optional private networking: a VNet whose first subnet carries the function app's outbound traffic (VNet
// integration) and whose second holds private endpoints for the state storage account (blob and table), with the
// private DNS zones that make the account's normal host names resolve to them. The storage account's public
// access is turned off by the storage module.

param namePrefix string
param location string
param tags object
param storageId string
@description('Flex Consumption integrates through a subnet delegated to Microsoft.App/environments; Premium and Dedicated through Microsoft.Web/serverFarms.')
param flex bool
@description('Address space of the VNet.')
param addressPrefix string = '10.60.0.0/16'
@description('Subnet for the function app\'s outbound traffic, inside addressPrefix.')
param integrationPrefix string = '10.60.0.0/24'
@description('Subnet for the private endpoints, inside addressPrefix.')
param endpointsPrefix string = '10.60.1.0/24'
var services = [
  'blob'
  'table'
]

resource vnet 'Microsoft.Network/virtualNetworks@2024-05-01' = {
  name: '${namePrefix}-vnet'
  location: location
  tags: tags
  properties: {
    addressSpace: {
      addressPrefixes: [
        addressPrefix
      ]
    }
    subnets: [
      {
        name: 'integration'
        properties: {
          addressPrefix: integrationPrefix
          delegations: [
            {
              name: 'functions'
              properties: {
                serviceName: flex ? 'Microsoft.App/environments' : 'Microsoft.Web/serverFarms'
              }
            }
          ]
        }
      }
      {
        name: 'endpoints'
        properties: {
          addressPrefix: endpointsPrefix
          privateEndpointNetworkPolicies: 'Disabled'
        }
      }
    ]
  }
}

resource zones 'Microsoft.Network/privateDnsZones@2024-06-01' = [
  for service in services: {
    name: 'privatelink.${service}.${environment().suffixes.storage}'
    location: 'global'
    tags: tags
  }
]

resource zoneLinks 'Microsoft.Network/privateDnsZones/virtualNetworkLinks@2024-06-01' = [
  for (service, i) in services: {
    parent: zones[i]
    name: '${namePrefix}-${service}-link'
    location: 'global'
    properties: {
      registrationEnabled: false
      virtualNetwork: {
        id: vnet.id
      }
    }
  }
]

resource endpoints 'Microsoft.Network/privateEndpoints@2024-05-01' = [
  for service in services: {
    name: '${namePrefix}-${service}-pe'
    location: location
    tags: tags
    properties: {
      subnet: {
        id: vnet.properties.subnets[1].id
      }
      privateLinkServiceConnections: [
        {
          name: service
          properties: {
            privateLinkServiceId: storageId
            groupIds: [
              service
            ]
          }
        }
      ]
    }
  }
]

resource zoneGroups 'Microsoft.Network/privateEndpoints/privateDnsZoneGroups@2024-05-01' = [
  for (service, i) in services: {
    parent: endpoints[i]
    name: 'default'
    properties: {
      privateDnsZoneConfigs: [
        {
          name: service
          properties: {
            privateDnsZoneId: zones[i].id
          }
        }
      ]
    }
  }
]

output integrationSubnetId string = vnet.properties.subnets[0].id
