import { folderIcon } from "./icons.js";

// A folder's button content in the folder bar: its icon, its name and its unread count, drawn as a
// badge but read (and matched) as "INBOX (3)".
export function FolderLabel({ box }) {
  const Icon = folderIcon(box.name);
  return (
    <>
      <Icon /><span className="name">{box.name}</span>
      {box.unread ? <span className="count"><span className="sr-only"> (</span>{box.unread}<span className="sr-only">)</span></span> : null}
    </>
  );
}
