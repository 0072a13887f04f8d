// The OpenTelemetry JS SDK sending logs to logpipe: `node otel.js http` or `node otel.js proto`.
// Reads OTEL_SERVICE_NAME and OTEL_EXPORTER_OTLP_LOGS_ENDPOINT (and _HEADERS) from the environment.
const { logs, SeverityNumber } = require('@opentelemetry/api-logs');
const { LoggerProvider, BatchLogRecordProcessor } = require('@opentelemetry/sdk-logs');
const { detectResources, envDetector } = require('@opentelemetry/resources');
const { OTLPLogExporter } =
  process.argv[2] === 'proto'
    ? require('@opentelemetry/exporter-logs-otlp-proto')
    : require('@opentelemetry/exporter-logs-otlp-http');

const provider = new LoggerProvider({
  // Without this resource the provider ignores OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES
  // and every record arrives as `unknown_service:node`.
  resource: detectResources({ detectors: [envDetector] }),
  processors: [new BatchLogRecordProcessor({ exporter: new OTLPLogExporter() })],
});
logs.setGlobalLoggerProvider(provider);

async function main() {
  const logger = logs.getLogger('checkout');
  const count = Number(process.env.COUNT || 10);
  for (let n = 0; n < count; n++) {
    logger.emit({
      severityNumber: SeverityNumber.WARN,
      severityText: 'WARN',
      body: `order ${n}`,
      attributes: { 'order.id': n },
    });
  }
  await provider.shutdown(); // flushes what is batched
}

main();
