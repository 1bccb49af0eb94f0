// MQTT.js in a real browser (Debian's headless Chromium, driven by playwright-core) through
// the proxy's WebSocket listeners, plain (ws://) and TLS (wss://, certificate of a CA made
// here and trusted in the browser's NSS database, no --ignore-certificate-errors).
//
// For each transport: a Node MQTT.js client on the proxy's TCP listener subscribes to what
// the page will publish and answers it; the page (served on localhost) connects, subscribes,
// publishes, and lists what it receives. The test asserts on the page, on what the Node
// client got, and saves a screenshot per transport under $ARTIFACTS (default
// target/browser/). The proxy binary ($PROXY_BIN) runs against $KAFKA_BOOTSTRAP.
//
// Prints `browser: N passed, M failed` last and exits non-zero when anything failed.

import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, mkdirSync, readFileSync, writeFileSync, rmSync } from "node:fs";
import { createServer } from "node:http";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import mqtt from "mqtt";
import { chromium } from "playwright-core";

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, "../..");
const bootstrap = process.env.KAFKA_BOOTSTRAP;
const proxyBin = process.env.PROXY_BIN ?? path.join(root, "target/debug/mqtt-kafka-proxy");
const chromiumBin = process.env.CHROMIUM ?? "/usr/bin/chromium";
const artifacts = path.resolve(process.env.ARTIFACTS ?? path.join(root, "target/browser"));
const WAIT_MS = 30_000;
const log = (...args) => console.log(`[browser] ${new Date().toISOString().slice(11, 19)}`, ...args);

if (!bootstrap) {
  console.error("KAFKA_BOOTSTRAP is not set: source .local/env (make env-up)");
  process.exit(2);
}

/** A port free right now on 127.0.0.1. */
function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

async function waitFor(what, check, ms = WAIT_MS) {
  const deadline = Date.now() + ms;
  let last;
  while (Date.now() < deadline) {
    try {
      const value = await check();
      if (value) return value;
    } catch (e) {
      last = e;
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`timed out waiting for ${what}${last ? `: ${last.message}` : ""}`);
}

/** A CA and a certificate for localhost signed by it (openssl). */
function makeCertificates(dir) {
  const openssl = (...args) => execFileSync("openssl", args, { cwd: dir, stdio: ["ignore", "ignore", "pipe"] });
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
  openssl("req", "-x509", ...ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
    "-subj", "/CN=mqtt-kafka browser e2e CA",
    "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign");
  openssl("req", ...ec, "-keyout", "tls.key", "-out", "tls.csr", "-subj", "/CN=localhost");
  writeFileSync(path.join(dir, "ext.cnf"),
    "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n" +
    "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n");
  openssl("x509", "-req", "-in", "tls.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
    "-out", "tls.crt", "-days", "2", "-extfile", "ext.cnf");
}

/** A home directory whose NSS database (what Chromium on Linux trusts) holds the CA. */
function trustingHome(dir) {
  const home = path.join(dir, "home");
  const db = path.join(home, ".pki/nssdb");
  mkdirSync(db, { recursive: true });
  execFileSync("certutil", ["-d", `sql:${db}`, "-N", "--empty-password"]);
  execFileSync("certutil", ["-d", `sql:${db}`, "-A", "-t", "C,,", "-n", "mqtt-kafka-e2e", "-i", path.join(dir, "ca.crt")]);
  return home;
}

function startProxy(dir, ports) {
  const config = path.join(dir, "proxy.yaml");
  writeFileSync(config, `# Written by e2e/browser/run.mjs
kafka: {bootstrapServers: "${bootstrap}"}
topics: {messages: e2e-browser-messages, retained: e2e-browser-retained, sessions: e2e-browser-sessions}
admin: {address: "127.0.0.1:${ports.admin}"}
listeners:
  - {name: mqtt, protocol: tcp, address: "127.0.0.1:${ports.tcp}"}
  - {name: ws, protocol: websocket, address: "127.0.0.1:${ports.ws}", path: /mqtt}
  - name: wss
    protocol: websocket
    address: "127.0.0.1:${ports.wss}"
    path: /mqtt
    tls: {certFile: "${path.join(dir, "tls.crt")}", keyFile: "${path.join(dir, "tls.key")}"}
`);
  const logFile = path.join(artifacts, "proxy.log");
  const out = [];
  const child = spawn(proxyBin, ["--config", config, "--create-topics", "--instance-id", "browser-e2e"], {
    env: { ...process.env, NO_COLOR: "1", RUST_LOG: process.env.RUST_LOG ?? "info" },
    stdio: ["ignore", "pipe", "pipe"],
  });
  for (const stream of [child.stdout, child.stderr]) stream.on("data", (d) => out.push(d));
  child.saveLog = () => writeFileSync(logFile, Buffer.concat(out));
  return child;
}

/** Serves the page and MQTT.js's browser bundle on localhost. */
async function servePage() {
  const files = {
    "/": ["text/html", readFileSync(path.join(here, "index.html"))],
    "/mqtt.min.js": ["text/javascript", readFileSync(path.join(here, "node_modules/mqtt/dist/mqtt.min.js"))],
  };
  const server = createServer((req, res) => {
    const file = files[new URL(req.url, "http://localhost").pathname];
    if (!file) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { "content-type": file[0] }).end(file[1]);
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return server;
}

/** One transport: the Node peer on TCP, the page in the browser on `url`. */
async function check(browser, pageBase, ports, label, url) {
  const run = `${Date.now().toString(36)}-${label}`;
  const fromPage = `browser/${run}/from-page`;
  const toPage = `browser/${run}/to-page`;
  const reply = `hello page over ${label}, from a TCP client`;
  const peer = await mqtt.connectAsync(`mqtt://127.0.0.1:${ports.tcp}`, {
    protocolVersion: 5,
    clientId: `node-peer-${run}`,
    reconnectPeriod: 0,
  });
  const peerGot = [];
  peer.on("message", (topic, payload) => {
    peerGot.push(`${topic}: ${payload}`);
    peer.publish(toPage, reply, { qos: 1 });
  });
  const page = await browser.newPage({ viewport: { width: 900, height: 520 } });
  const consoleLines = [];
  page.on("console", (m) => consoleLines.push(m.text()));
  try {
    await peer.subscribeAsync(fromPage, { qos: 1 });
    const query = new URLSearchParams({ url, label, sub: toPage, pub: fromPage });
    await page.goto(`${pageBase}/?${query}`);
    const expected = `${toPage}: ${reply}`;
    try {
      await page.locator("#received li", { hasText: reply }).waitFor({ timeout: WAIT_MS });
    } finally {
      await page.screenshot({ path: path.join(artifacts, `${label}.png`) });
    }
    await page.locator("#published", { hasText: "PUBACK received" }).waitFor({ timeout: WAIT_MS });
    const status = await page.textContent("#status");
    const received = await page.locator("#received li").allTextContents();
    const published = await page.textContent("#published");
    if (status !== "connected") throw new Error(`page status ${JSON.stringify(status)}`);
    if (!received.includes(expected)) throw new Error(`page received ${JSON.stringify(received)}`);
    if (!published.includes("PUBACK received")) throw new Error(`page published ${JSON.stringify(published)}`);
    const sent = `${fromPage}: hello from the browser over ${label}`;
    if (!peerGot.includes(sent)) throw new Error(`the TCP client got ${JSON.stringify(peerGot)}`);
    log(`${label}: the page got ${JSON.stringify(received)}; the TCP client got ${JSON.stringify(peerGot)}`);
  } catch (e) {
    const status = await page.textContent("#status").catch(() => "?");
    throw new Error(`${e.message} (page status ${JSON.stringify(status)}; console ${JSON.stringify(consoleLines)})`);
  } finally {
    await page.close();
    await peer.endAsync();
  }
}

async function main() {
  rmSync(artifacts, { recursive: true, force: true });
  mkdirSync(artifacts, { recursive: true });
  const dir = mkdtempSync(path.join(os.tmpdir(), "mqtt-kafka-browser-"));
  const ports = { admin: await freePort(), tcp: await freePort(), ws: await freePort(), wss: await freePort() };
  let proxy;
  let browser;
  let server;
  const results = [];
  try {
    makeCertificates(dir);
    const home = trustingHome(dir);
    proxy = startProxy(dir, ports);
    const exited = new Promise((resolve) => proxy.once("exit", (code) => resolve(code)));
    await Promise.race([
      waitFor("the proxy's /readyz", async () => (await fetch(`http://127.0.0.1:${ports.admin}/readyz`)).ok, 90_000),
      exited.then((code) => Promise.reject(new Error(`the proxy exited with ${code}`))),
    ]);
    log(`proxy ready: tcp ${ports.tcp}, ws ${ports.ws}, wss ${ports.wss}`);
    server = await servePage();
    const pageBase = `http://localhost:${server.address().port}`;
    browser = await chromium.launch({
      executablePath: chromiumBin,
      // HOME holds the NSS database that trusts the test's CA.
      env: { ...process.env, HOME: home },
      args: ["--no-sandbox", "--disable-dev-shm-usage"],
    });
    log(`chromium ${browser.version()}`);
    for (const [label, url] of [
      ["ws", `ws://localhost:${ports.ws}/mqtt`],
      ["wss", `wss://localhost:${ports.wss}/mqtt`],
    ]) {
      try {
        await check(browser, pageBase, ports, label, url);
        results.push([label, null]);
        log(`PASS ${label} (screenshot ${path.join(artifacts, `${label}.png`)})`);
      } catch (e) {
        results.push([label, e]);
        log(`FAIL ${label}: ${e.message}`);
      }
    }
  } catch (e) {
    log(`FAIL set-up: ${e.message}`);
    results.push(["set-up", e]);
  } finally {
    await browser?.close().catch(() => {});
    server?.close();
    if (proxy) {
      proxy.kill("SIGTERM");
      await new Promise((resolve) => {
        if (proxy.exitCode !== null) return resolve();
        const timer = setTimeout(() => { proxy.kill("SIGKILL"); resolve(); }, 10_000);
        proxy.once("exit", () => { clearTimeout(timer); resolve(); });
      });
      proxy.saveLog();
    }
    rmSync(dir, { recursive: true, force: true });
  }
  const failed = results.filter(([, e]) => e).length;
  console.log(`browser: ${results.length - failed} passed, ${failed} failed`);
  process.exit(failed === 0 ? 0 : 1);
}

main();
