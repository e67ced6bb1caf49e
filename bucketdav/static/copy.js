// Copy buttons: any <button class="copy" data-copy="text"> copies its text when clicked.
"use strict";

async function writeClipboard(text) {
  if (navigator.clipboard && window.isSecureContext) {
    await navigator.clipboard.writeText(text);
    return;
  }
  // Plain-http pages on another host have no Clipboard API; a selected textarea still copies.
  const area = document.createElement("textarea");
  area.value = text;
  area.setAttribute("readonly", "");
  area.className = "visually-hidden";
  document.body.appendChild(area);
  area.select();
  const ok = document.execCommand("copy");
  area.remove();
  if (!ok) throw new Error("copy refused");
}

export function copyButton(text, label) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "copy";
  button.dataset.copy = text;
  button.textContent = "Copy";
  button.setAttribute("aria-label", label);
  return button;
}

document.addEventListener("click", async (event) => {
  const button = event.target.closest("button.copy");
  if (!button) return;
  const shown = button.textContent;
  try {
    await writeClipboard(button.dataset.copy);
    button.textContent = "Copied";
    button.classList.add("done");
  } catch {
    button.textContent = "Select and copy by hand";
  }
  setTimeout(() => {
    button.textContent = shown;
    button.classList.remove("done");
  }, 1500);
});
