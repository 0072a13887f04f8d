// pino through pino-opentelemetry-transport (OTLP http/protobuf by default).
// Reads OTEL_SERVICE_NAME and OTEL_EXPORTER_OTLP_LOGS_ENDPOINT from the environment.
const pino = require('pino');

const transport = pino.transport({ target: 'pino-opentelemetry-transport' });
const logger = pino(transport);

transport.on('ready', () => {
  const count = Number(process.env.COUNT || 10);
  for (let n = 0; n < count; n++) {
    logger.error({ order: n }, `order ${n}`);
  }
  // pino ends the transport at exit, which flushes the exporter.
});
