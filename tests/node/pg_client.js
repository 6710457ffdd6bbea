// Runs one SQL statement through node-postgres and prints one JSON line:
// {"rows": [[...], ...]} or {"error": message, "code": SQLSTATE}.
// Usage: node pg_client.js HOST PORT USER PASSWORD DATABASE SQL
const { Client } = require("pg");

async function main() {
  const [host, port, user, password, database, sql] = process.argv.slice(2);
  const client = new Client({ host, port: Number(port), user, password, database, ssl: false });
  await client.connect();
  try {
    const result = await client.query({ text: sql, rowMode: "array" });
    const rows = (result.rows || []).map((row) => row.map((v) => (v === null ? null : String(v))));
    console.log(JSON.stringify({ rows, command: result.command, count: result.rowCount }));
  } catch (err) {
    console.log(JSON.stringify({ error: err.message, code: err.code || null }));
  } finally {
    await client.end();
  }
}

main().catch((err) => {
  console.log(JSON.stringify({ error: String(err && err.message), code: (err && err.code) || null }));
  process.exit(1);
});
