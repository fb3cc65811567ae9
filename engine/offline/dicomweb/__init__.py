"""Scoring the X-rays of a DICOMweb server (a PACS) and writing the results back into it:
a small client (`client`: QIDO-RS, WADO-RS, STOW-RS over httpx, with its bounded multipart
codec `multipart`), which instances are frontal chest radiographs (`views`), the Structured
Report of one result (`sr`, highdicom) and the resumable run (`run`)."""
