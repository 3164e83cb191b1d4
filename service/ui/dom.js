// The page's DOM helpers, shared by app.js and lesson.js.

// The element with this id.
export const $ = (id) => document.getElementById(id);

// A new element: `props` assigned to it (textContent, className, type, ...), then `children`
// (nodes or strings) appended.
export function element(tag, props = {}, children = []) {
  const node = document.createElement(tag);
  Object.assign(node, props);
  for (const child of children) node.append(child);
  return node;
}
