// Reads a token from shiptoken and waits for each new one (Node.js, no packages).
//
// usage: node watch_token.mjs SOCKET PROVIDER/ACCOUNT [CHANGES]
// Prints one line per token or status it sees; stops after CHANGES changes (default: never).
import http from "node:http";

const [socketPath, account, changesArg] = process.argv.slice(2);
const changes = changesArg === undefined ? Infinity : Number(changesArg);
// One keep-alive connection for every request.
const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });

function fetchToken(wait, known) {
  const query = new URLSearchParams();
  if (wait !== undefined) query.set("wait", String(wait));
  if (known !== undefined) query.set("known", known);
  const q = query.toString();
  return new Promise((resolve, reject) => {
    const req = http.get(
      { socketPath, agent, path: `/v1/tokens/${account}${q ? "?" + q : ""}`, timeout: 330_000 },
      (res) => {
        let data = "";
        res.setEncoding("utf8");
        res.on("data", (chunk) => (data += chunk));
        res.on("end", () => resolve({ status: res.statusCode, body: JSON.parse(data) }));
      },
    );
    req.on("error", reject);
  });
}

// Never print the token itself.
const describe = ({ status, body }) =>
  status === 200
    ? `token ${body.fingerprint} refresh_after ${body.refresh_after}`
    : `${status} ${body.error}: ${body.message}`;

let answer = await fetchToken();
console.log(describe(answer));
let known = answer.body.fingerprint ?? answer.body.error;
for (let seen = 0; seen < changes; ) {
  answer = await fetchToken(300, known);
  const now = answer.body.fingerprint ?? answer.body.error;
  if (now !== known) {
    console.log(describe(answer));
    known = now;
    seen += 1;
  }
}
agent.destroy();
