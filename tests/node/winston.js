// winston's Http transport posting to logpipe's /ingest. LOGPIPE_URL is the ingestor's base URL.
const winston = require('winston');

const url = new URL(process.env.LOGPIPE_URL || 'http://localhost:8080');
const http = new winston.transports.Http({
  host: url.hostname,
  port: Number(url.port || 80),
  path: '/ingest',
  // auth: { bearer: process.env.LOGPIPE_API_KEY },   // when LOGPIPE_API_KEYS is set
  batch: true, // one POST of a JSON array per 100 records or 1 s
  batchCount: 100,
  batchInterval: 1000,
});
const logger = winston.createLogger({
  defaultMeta: { service: 'checkout' },
  transports: [http],
});

// winston's Http transport calls every answer other than 200 an error and says so as a
// 'warn' event: "Invalid HTTP Status Code: 202". logpipe answers 202 (accepted, stored
// shortly); the events are in. Nothing is retried either way.
const count = Number(process.env.COUNT || 10);
const requests = Math.ceil(count / 100);
const answers = [];
http.on('warn', (err) => answers.push(err.message));
http.on('logged', () => answers.push('200'));

for (let n = 0; n < count; n++) {
  logger.info(`order ${n}`, { order: n });
}
const deadline = Date.now() + 30000;
const timer = setInterval(() => {
  if (answers.length >= requests || Date.now() > deadline) {
    clearInterval(timer);
    console.log(JSON.stringify({ answers }));
  }
}, 50);
