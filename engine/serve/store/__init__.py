"""The server's state on disk, SQLite in WAL mode, usable without the 'serve' extra (standard
library and numpy only): the schemas (`schema`), the prediction log (`predictions`, its rows
`record`) and its reports (`reports`), persistent batch jobs (`jobs`) and what an upload may
hold (`uploads`)."""
