"""The OHIF viewer (npm `@ohif/app`'s built `dist/`), fetched pinned by
`bin/fetch-viewer` (`fetch`) and served under /viewer/ by the web process
(`views`), configured per request for our DICOMweb roots (`config`)."""
