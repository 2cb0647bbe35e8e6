package disk

import "fmt"

const (
	sectorSize = 512
	mib        = 1 << 20
)

// layout places the four partitions for a disk of size bytes: the first at
// 1 MiB, every start and size a whole number of MiB, data up to the last
// whole MiB before the backup GPT.
func layout(size, espSize, slotSize int64) ([]Partition, error) {
	for _, x := range []struct {
		name string
		size int64
	}{{"ESP", espSize}, {"slot", slotSize}} {
		if x.size <= 0 || x.size%mib != 0 {
			return nil, fmt.Errorf("%s size %d is not a positive whole number of MiB", x.name, x.size)
		}
	}
	end := (size - gptOverheadEnd*sectorSize) / mib * mib
	parts := []Partition{
		{Name: ESPName, Index: 1, Start: mib, Size: espSize},
		{Name: SlotAName, Index: 2, Size: slotSize},
		{Name: SlotBName, Index: 3, Size: slotSize},
		{Name: DataName, Index: 4},
	}
	for i := 1; i < len(parts); i++ {
		parts[i].Start = parts[i-1].Start + parts[i-1].Size
	}
	data := &parts[3]
	data.Size = end - data.Start
	if data.Size < MinDataSize {
		need := data.Start + MinDataSize + mib
		return nil, fmt.Errorf("disk of %d MiB is too small: the layout needs at least %d MiB (ESP %d MiB, two slots of %d MiB, data %d MiB)",
			size/mib, need/mib, espSize/mib, slotSize/mib, MinDataSize/mib)
	}
	return parts, nil
}
