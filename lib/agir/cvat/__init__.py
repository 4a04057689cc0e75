"""The CVAT round trip: upload pre-labels (`upload.run_upload_stage`), wait for people, download refined
masks (`download.run_download_stage`). See docs/cvat.md for keys, the status gate and the statistics."""
