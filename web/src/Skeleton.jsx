// Placeholder rows while the first listing of a view is on its way: the shape of the rows to come,
// hidden from assistive technology, which hears the list's busy state and a "Loading…" instead.
const WIDTHS = [62, 48, 75, 55, 68, 41, 58, 71]; // sender line lengths (%), so the rows do not look stamped

export function SkeletonRows({ count = 24 }) {
  return (
    <>
      <li className="loading"><span className="sr-only">Loading…</span></li>
      {Array.from({ length: count }, (_, i) => (
        <li key={i} className="skeleton" aria-hidden="true">
          <span className="row">
            <span className="avatar" />
            <span className="from"><span className="bar" style={{ width: `${WIDTHS[i % WIDTHS.length]}%` }} /></span>
            <span className="when"><span className="bar" /></span>
            <span className="line"><span className="bar" style={{ width: `${WIDTHS[(i + 3) % WIDTHS.length] + 20}%` }} /></span>
          </span>
        </li>
      ))}
    </>
  );
}

// The same for a message being fetched: a heading, its actions and a few lines of text.
export function PreviewSkeleton() {
  return (
    <div className="skeleton preview-skeleton" aria-hidden="true">
      <span className="bar heading" />
      <span className="bar actions-bar" />
      {[92, 85, 96, 60].map((w, i) => <span key={i} className="bar" style={{ width: `${w}%` }} />)}
    </div>
  );
}
