package boot

import (
	"fmt"
	"io"
	"os"

	"github.com/plinth-os/plinth/init/config"
)

// fwCfgConfig is where QEMU's -fw_cfg name=opt/plinth/config shows up once
// the qemu_fw_cfg module is loaded.
const fwCfgConfig = "/sys/firmware/qemu_fw_cfg/by_name/opt/plinth/config/raw"

// FwCfgBundle is where QEMU's -fw_cfg name=opt/plinth/bundle shows up: the
// cluster bundle, when the machine config says bundle = "fw_cfg".
const FwCfgBundle = "/sys/firmware/qemu_fw_cfg/by_name/opt/plinth/bundle/raw"

// maxConfigSize bounds what init reads: a config is a few hundred bytes,
// and the parser is slow on pathological input.
const maxConfigSize = 1 << 20

// loadMachineConfig finds and parses the machine config: the path named by
// plinth.config= ("fw_cfg" for QEMU's firmware config), else QEMU's fw_cfg
// entry if present, else the built-in defaults. It returns the source's
// name for messages even on error, and the file's bytes (nil for the
// defaults) for the services that read their own sections.
func loadMachineConfig(cl cmdline) (config.Machine, string, []byte, error) {
	path, name := cl[paramConfig], ""
	switch path {
	case "fw_cfg":
		path, name = fwCfgConfig, "fw_cfg:opt/plinth/config"
	case "":
		if _, err := os.Stat(fwCfgConfig); err != nil {
			return config.Default(), "built-in defaults", nil, nil
		}
		path, name = fwCfgConfig, "fw_cfg:opt/plinth/config"
	default:
		name = path
	}
	m, data, err := ReadMachineConfig(path, name)
	return m, name, data, err
}

// ReadMachineConfig reads and parses the machine config at path as boot
// does, with the same size limit, naming the file name in its messages;
// `plinth config check` uses it, so a file it passes boots. It returns the
// file's bytes too. Problems in the file are a *config.Error.
func ReadMachineConfig(path, name string) (config.Machine, []byte, error) {
	data, err := readLimited(path, maxConfigSize)
	if err != nil {
		return config.Machine{}, nil, err
	}
	m, err := config.Parse(name, data)
	return m, data, err
}

func readLimited(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read machine config: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("read machine config %s: %w", path, err)
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("machine config %s is larger than %d bytes", path, limit)
	}
	return data, nil
}
