// Runs SQL through node mysql2 and prints one JSON line:
// {"results": [{"rows": [[...], ...]} | {"affected": n}, ...]} or {"error": message, "errno": n,
// "code": SQLSTATE}.
// Usage: node mysql2_client.js HOST PORT USER PASSWORD DATABASE MODE SQL [PARAMS_JSON]
// MODE: "query" (text protocol, several statements allowed) or "execute" (a prepared statement,
// binary protocol, with the parameters of PARAMS_JSON). An empty PASSWORD connects without one;
// otherwise the proxy asks for it with mysql_clear_password, which mysql2 sends only when told.
const mysql = require("mysql2/promise");

function shape(result) {
  if (Array.isArray(result)) {
    return { rows: result.map((row) => row.map((v) => (v === null ? null : String(v)))) };
  }
  return { affected: result.affectedRows };
}

async function main() {
  const [host, port, user, password, database, mode, sql, params] = process.argv.slice(2);
  const options = { host, port: Number(port), user, database, multipleStatements: true, rowsAsArray: true };
  if (password) {
    options.password = password;
    options.enableCleartextPlugin = true;
  }
  const conn = await mysql.createConnection(options);
  try {
    await conn.ping();
    const [result, fields] =
      mode === "execute"
        ? await conn.execute(sql, JSON.parse(params || "[]"))
        : await conn.query(sql);
    // Several statements: an array of results, one per statement.
    const several = Array.isArray(fields) && fields.some((f) => Array.isArray(f) || f === undefined);
    const results = several ? result.map(shape) : [shape(result)];
    console.log(JSON.stringify({ results }));
  } catch (err) {
    console.log(JSON.stringify({ error: err.message, errno: err.errno || null, code: err.sqlState || null }));
  } finally {
    await conn.end();
  }
}

main().catch((err) => {
  console.log(
    JSON.stringify({ error: String(err && err.message), errno: (err && err.errno) || null, code: null }),
  );
  process.exit(1);
});
