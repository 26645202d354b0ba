module edgereason/tests/go

go 1.19
