package sync

import (
	"bytes"
	"testing"

	"github.com/systemimager/sim/chunk"
	"github.com/systemimager/sim/store"
)

// FuzzDecode: no input makes Decode panic or hand over unverified bytes.
func FuzzDecode(f *testing.F) {
	var b bytes.Buffer
	enc, _ := NewEncoder(&b)
	enc.Blob(store.TypeData, chunk.Sum([]byte("hello")), []byte("hello"))
	enc.CompressFrame([]FrameEntry{{Type: store.TypeTree, ID: chunk.Sum([]byte("t"))}}, [][]byte{[]byte("t")})
	enc.Commit(chunk.Sum([]byte("{}")), []byte("{}"))
	enc.Close()
	f.Add(b.Bytes())
	f.Fuzz(func(t *testing.T, in []byte) {
		Decode(bytes.NewReader(in), Receiver{
			Blob: func(_ store.Type, id chunk.ID, data []byte) error {
				if chunk.Sum(data) != id {
					t.Fatal("unverified blob handed over")
				}
				return nil
			},
			Base: func(chunk.ID) ([]byte, error) { return []byte("base"), nil },
		})
	})
}
