"""The store on disk: staging, blobs, links, and the checker."""
