"""Code nodes: user Python run in a bubblewrap sandbox, one fresh process per call (`foldflow activities --code`)."""
