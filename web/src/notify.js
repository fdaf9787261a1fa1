// New-mail signals: a quiet chime, a desktop notification when allowed, else the page's toast.
// Notifications are tagged with the email id so reading the mail anywhere can close them.
const open = new Map();

// Web Audio; browsers allow it once the page has had a user gesture.
export function chime() {
  try {
    const ctx = chime.ctx || (chime.ctx = new AudioContext());
    const osc = ctx.createOscillator();
    const gain = ctx.createGain();
    osc.frequency.value = 880;
    gain.gain.setValueAtTime(0.05, ctx.currentTime);
    gain.gain.exponentialRampToValueAtTime(0.0001, ctx.currentTime + 0.3);
    osc.connect(gain).connect(ctx.destination);
    osc.start();
    osc.stop(ctx.currentTime + 0.3);
  } catch {
    // No audio here: the list and the notification still tell.
  }
}

export const canNotify = () => "Notification" in window && Notification.permission === "granted";
// Read on every render of the header: Notification.permission costs a few ms a read in Chromium, so
// it is read once and again when it may have changed (the page asked, or the site settings changed).
let permission = "Notification" in window ? Notification.permission : "denied";
if ("Notification" in window && navigator.permissions) {
  navigator.permissions.query({ name: "notifications" }).then(
    (status) => { status.onchange = () => { permission = Notification.permission; }; },
    () => {},
  );
}
export const mayAskToNotify = () => permission === "default";
export const askToNotify = () => Notification.requestPermission().then((p) => { permission = p; return p; });

/** Announce new mail; returns a line for the toast when no desktop notification could be shown. */
export function announce(mail, { sound }) {
  if (sound) chime();
  const from = mail.fromName || mail.fromAddress || mail.from || "someone";
  if (canNotify()) {
    open.set(mail.id, new Notification(from, { body: mail.subject || "(no subject)", tag: mail.id }));
    return "";
  }
  return `New mail from ${from}: ${mail.subject || "(no subject)"}`;
}

export function withdraw(emailId) {
  open.get(emailId)?.close();
  open.delete(emailId);
  // One the service worker showed for a push (public/sw.js) while no tab was open.
  navigator.serviceWorker?.getRegistration().then((r) => r && r.getNotifications({ tag: emailId })).then(
    (shown) => (shown || []).forEach((n) => n.close()),
    () => {},
  );
}
