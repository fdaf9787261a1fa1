// Contact avatars: initials, and a colour derived from the address so a sender keeps theirs.
export function initials(name) {
  const parts = (name || "?").replace(/<.*>/, "").replace(/["']/g, "").trim().split(/\s+/);
  return ((parts[0] || "?")[0] + (parts[1] ? parts[1][0] : "")).toUpperCase();
}

// Lightness 28% keeps white initials above WCAG AA contrast (4.5:1) for every hue.
export function colour(address) {
  let h = 0;
  for (const c of (address || "").toLowerCase()) h = (h * 31 + c.charCodeAt(0)) % 360;
  return `hsl(${h} 60% 28%)`;
}
