// The "Co-sell Sync" workbook on Application Insights: syncs by outcome, latency percentiles, errors
// by reason and dead letters, from the worker's spans (shared/telemetry.py). Each sync is a CONSUMER
// span, so it lands in the `requests` table with its `cosell.*` attributes in customDimensions;
// tests/infra/test_workbook.py keeps the names below in step with the code. Plain syntax (no `func`),
// so checkov can parse and scan it.
param location string
param tags object = {}
@description('Resource id of the Application Insights component the app sends its telemetry to.')
param applicationInsightsId string

var syncSpans = '("sync pc", "sync crm")'

var queries = {
  syncsByOutcome: 'requests | where name in ${syncSpans} | extend outcome = tostring(customDimensions["cosell.outcome"]) | summarize syncs = count() by outcome, bin(timestamp, 1h) | render timechart'
  latency: 'requests | where name in ${syncSpans} and tostring(customDimensions["cosell.outcome"]) == "synced" | extend change_to_synced_ms = todouble(customDimensions["cosell.change_age_ms"]) | summarize sync_p50_ms = percentile(duration, 50), sync_p95_ms = percentile(duration, 95), sync_p99_ms = percentile(duration, 99), change_to_synced_p50_ms = percentile(change_to_synced_ms, 50), change_to_synced_p95_ms = percentile(change_to_synced_ms, 95) by bin(timestamp, 1h) | render timechart'
  errorsByReason: 'requests | where name in ${syncSpans} or name == "dead letter sync" | extend outcome = tostring(customDimensions["cosell.outcome"]), reason = tostring(customDimensions["cosell.error_reason"]) | where outcome in ("error", "retry", "dead_letter") | summarize count() by reason, outcome | order by count_ desc'
  deadLetters: 'requests | where name == "dead letter sync" | project timestamp, dead_letter = tostring(customDimensions["cosell.dead_letter_id"]), reason = tostring(customDimensions["cosell.error_reason"]), referral = tostring(customDimensions["cosell.referral_id"]), crm_record = tostring(customDimensions["cosell.crm_record_id"]), trace = operation_Id | order by timestamp desc'
}

var day = 86400000
var week = 604800000

var content = {
  version: 'Notebook/1.0'
  isLocked: false
  fallbackResourceIds: [
    applicationInsightsId
  ]
  items: [
    {
      type: 1
      name: 'intro'
      content: {
        json: '## Co-sell Sync\nOne trace per change: open a row\'s `trace` in Transaction search to follow it from the webhook or poll to every API call. `python -m shared dead-letters list` and the status page replay dead letters.'
      }
    }
    {
      type: 3
      name: 'syncs-by-outcome'
      content: {
        version: 'KqlItem/1.0'
        title: 'Syncs by outcome (last 24 hours)'
        query: queries.syncsByOutcome
        size: 0
        queryType: 0
        resourceType: 'microsoft.insights/components'
        visualization: 'timechart'
        timeContext: {
          durationMs: day
        }
      }
    }
    {
      type: 3
      name: 'latency'
      content: {
        version: 'KqlItem/1.0'
        title: 'Latency percentiles (ms): sync duration, and change found to synced'
        query: queries.latency
        size: 0
        queryType: 0
        resourceType: 'microsoft.insights/components'
        visualization: 'timechart'
        timeContext: {
          durationMs: day
        }
      }
    }
    {
      type: 3
      name: 'errors-by-reason'
      content: {
        version: 'KqlItem/1.0'
        title: 'Errors by reason (last 24 hours)'
        query: queries.errorsByReason
        size: 0
        queryType: 0
        resourceType: 'microsoft.insights/components'
        visualization: 'table'
        timeContext: {
          durationMs: day
        }
      }
    }
    {
      type: 3
      name: 'dead-letters'
      content: {
        version: 'KqlItem/1.0'
        title: 'Dead letters (last 7 days)'
        query: queries.deadLetters
        size: 0
        queryType: 0
        resourceType: 'microsoft.insights/components'
        visualization: 'table'
        timeContext: {
          durationMs: week
        }
      }
    }
  ]
}

resource workbook 'Microsoft.Insights/workbooks@2023-06-01' = {
  name: guid(resourceGroup().id, applicationInsightsId, 'cosell-sync-workbook')
  location: location
  tags: tags
  kind: 'shared'
  properties: {
    displayName: 'Co-sell Sync'
    category: 'workbook'
    sourceId: applicationInsightsId
    serializedData: string(content)
  }
}

output id string = workbook.id
