"""Standard doors onto the store: an S3-compatible gateway (`gfs.gateway.s3`), WebDAV
(`gfs.gateway.webdav`) and a live dashboard (`gfs.gateway.dashboard`). See docs/gateway.md."""
