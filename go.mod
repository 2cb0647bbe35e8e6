module github.com/plinth-os/plinth

go 1.26.0

require (
	github.com/BurntSushi/toml v1.6.0 // indirect
	github.com/cavaliergopher/cpio v1.0.1 // indirect
	github.com/coreos/go-systemd/v22 v22.7.0 // indirect
	github.com/pierrec/lz4/v4 v4.1.33 // indirect
	golang.org/x/sys v0.50.0 // indirect
)
