// Marks the page as scripted before it is drawn, so no-JS-only parts never flash.
document.documentElement.classList.add("js");
