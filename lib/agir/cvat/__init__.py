"""The CVAT round trip: upload pre-labels (`upload.run_upload_stage`), wait for people, download refined
masks (`download.run_download_stage`). See docs/cvat.md for keys, the status gate and the statistics.

Modules: upload = plan (frames, tasks, names; no server) + tasks (project, labels, tasks on the server) +
preannotate (shapes sent to a task) + receipts (batch receipts, kept copies, metrics); download = gate (which
tasks, are they done, which task each record lands from) + annotations (one task -> masks); client, shapes,
decode and stats underneath.
"""

# Review hints (cvat_upload.review_hints): boxes of the most uncertain regions under a label of their own,
# which upload adds and download ignores (it never becomes a class).
REVIEW_LABEL = "review"
REVIEW_COLOR = "#ff00ff"
