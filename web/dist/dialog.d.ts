/** The credential prompt both pages share: shows `#token-dialog`, resolves with what was typed. */
export declare function askForSecret(storageKey: string): Promise<string>;
