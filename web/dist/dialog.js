/** The credential prompt both pages share: shows `#token-dialog`, resolves with what was typed. */
export function askForSecret(storageKey) {
    const dialog = document.getElementById("token-dialog");
    dialog.hidden = false;
    return new Promise((resolve) => {
        document.getElementById("token-form").onsubmit = (ev) => {
            ev.preventDefault();
            const value = document.getElementById("token-input").value.trim();
            if (!value)
                return;
            sessionStorage.setItem(storageKey, value);
            dialog.hidden = true;
            resolve(value);
        };
    });
}
