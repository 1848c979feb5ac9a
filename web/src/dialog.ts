/** The credential prompt both pages share: shows `#token-dialog`, resolves with what was typed. */
export function askForSecret(storageKey: string): Promise<string> {
  const dialog = document.getElementById("token-dialog") as HTMLElement;
  dialog.hidden = false;
  return new Promise((resolve) => {
    (document.getElementById("token-form") as HTMLFormElement).onsubmit = (ev) => {
      ev.preventDefault();
      const value = (document.getElementById("token-input") as HTMLInputElement).value.trim();
      if (!value) return;
      sessionStorage.setItem(storageKey, value);
      dialog.hidden = true;
      resolve(value);
    };
  });
}
