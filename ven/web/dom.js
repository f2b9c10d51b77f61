// Building the page's nodes, HTML and SVG; nothing here knows the gateway.
const SVG_NS = "http://www.w3.org/2000/svg";

export function $(id) { return document.getElementById(id); }
export function el(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined && text !== null) node.textContent = text;
  return node;
}
// host's children made `nodes`, unless they are equal already: the tables and tiles are made again at every
// refresh, and putting the same ones in had the browser lay out and paint the page again each time (most of an
// open page's CPU at a refresh a second)
export function putChildren(host, nodes) {
  const now = host.childNodes;
  if (now.length === nodes.length && nodes.every((node, i) => node.isEqualNode(now[i]))) return;
  host.replaceChildren(...nodes);
}
export function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}
