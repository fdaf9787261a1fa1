import { useEffect, useRef, useState } from "react";

// Files dragged from the desktop onto an element (the composer): `dragging` while they hover over
// it (the counter rides out the enter/leave pairs of its children), `onFiles` with what is dropped.
// While it is mounted, files dropped anywhere else do nothing, rather than the browser leaving the
// page to show the file.
const carriesFiles = (e) => [...(e.dataTransfer?.types || [])].includes("Files");

export function useFileDrop(onFiles) {
  const [dragging, setDragging] = useState(false);
  const depth = useRef(0);
  useEffect(() => {
    const refuse = (e) => { if (carriesFiles(e)) e.preventDefault(); };
    window.addEventListener("dragover", refuse);
    window.addEventListener("drop", refuse);
    return () => { window.removeEventListener("dragover", refuse); window.removeEventListener("drop", refuse); };
  }, []);
  const handlers = {
    onDragEnter: (e) => {
      if (!carriesFiles(e)) return;
      e.preventDefault();
      depth.current += 1;
      setDragging(true);
    },
    onDragOver: (e) => {
      if (!carriesFiles(e)) return;
      e.preventDefault(); // this is a drop target
      e.dataTransfer.dropEffect = "copy";
    },
    onDragLeave: (e) => {
      if (!carriesFiles(e)) return;
      depth.current = Math.max(0, depth.current - 1);
      if (depth.current === 0) setDragging(false);
    },
    onDrop: (e) => {
      if (!carriesFiles(e)) return;
      e.preventDefault(); // the files are attached, not opened (nor pasted into the text)
      depth.current = 0;
      setDragging(false);
      if (e.dataTransfer.files.length) onFiles([...e.dataTransfer.files]);
    },
  };
  return { dragging, handlers };
}
