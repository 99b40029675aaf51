module shopdb.local/pause

go 1.23
