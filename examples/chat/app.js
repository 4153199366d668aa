// A minimal chat-like page on the Duplex SDK: it shows every push, and sends what you type as a
// request to a backend service, showing the reply. Settings come from the address:
//   ?dispatcher=http://127.0.0.1:7080/v1/nodes   (or ?endpoint=ws://127.0.0.1:7071/)
//   &token=<JWT>&client=<client id>&service=<service>&path=<path>
// A real app gets its token from its own login backend, not from the address.

import { Client, DuplexError } from "@duplex/client";

const params = new URLSearchParams(location.search);
const clientId = params.get("client") ?? `web-${crypto.randomUUID().slice(0, 8)}`;
const service = params.get("service") ?? "chat";
const path = params.get("path") ?? "/messages";
const storedSeq = Number(localStorage.getItem(`duplex-last-seq:${clientId}`) ?? 0);

const $ = (id) => document.getElementById(id);
const show = (text, kind = "push") => {
  const li = document.createElement("li");
  li.className = kind;
  li.textContent = text;
  $("messages").append(li);
};
const text = new TextDecoder();

const client = new Client({
  endpoints: params.getAll("endpoint"),
  dispatchers: params.getAll("dispatcher"),
  clientId,
  token: () => params.get("token") ?? "",
  lastSeq: storedSeq,
});

client.on("state", (state) => {
  $("state").textContent = state;
  $("state").dataset.state = state;
});
client.on("connected", ({ nodeId, endpoint }) => ($("node").textContent = `${nodeId} via ${endpoint}`));
client.on("disconnected", ({ reason }) => ($("node").textContent = reason));
client.on("push", (push) => {
  show(text.decode(push.payload));
  // Remember what was processed, so a reload resumes after it instead of showing it again.
  if (push.seq > 0) localStorage.setItem(`duplex-last-seq:${clientId}`, String(push.seq));
});
client.on("gap", ({ from, to }) => show(`(messages ${from} to ${to} expired)`, "reply"));
client.on("replaced", () => show("(this client id connected elsewhere; stopped)", "reply"));

// The browser knows when the network is back: no need to wait out the backoff.
window.addEventListener("online", () => client.reconnectNow());

$("send").addEventListener("submit", async (event) => {
  event.preventDefault();
  const body = JSON.stringify({ from: clientId, text: $("text").value });
  $("text").value = "";
  try {
    const reply = await client.request({ service, path, method: "POST", body });
    show(`reply ${reply.status}: ${text.decode(reply.body)}`, "reply");
  } catch (e) {
    show(e instanceof DuplexError ? `not sent: ${e.code}${e.retry ? " (try again later)" : ""}` : String(e), "reply");
  }
});

client.start();
