// Package manifests holds the tests of the kustomize manifests in this
// directory: they render with the kustomize API (what `kubectl apply -k` runs)
// and every object decodes strictly into its typed Kubernetes API struct, so a
// misspelled or misplaced field fails here rather than on a cluster.
package manifests

import (
	"fmt"
	"testing"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// object is one rendered manifest, decoded.
type object struct {
	apiVersion, kind, namespace, name string
	typed                             any // pointer to the typed struct
}

// newTyped maps apiVersion/kind to an empty typed object; anything else is an
// error, so a new kind in the manifests needs a decision here.
func newTyped(apiVersion, kind string) (any, error) {
	switch apiVersion + "/" + kind {
	case "v1/Namespace":
		return &corev1.Namespace{}, nil
	case "v1/ServiceAccount":
		return &corev1.ServiceAccount{}, nil
	case "v1/PersistentVolumeClaim":
		return &corev1.PersistentVolumeClaim{}, nil
	case "v1/Pod":
		return &corev1.Pod{}, nil
	case "apps/v1/DaemonSet":
		return &appsv1.DaemonSet{}, nil
	case "rbac.authorization.k8s.io/v1/ClusterRole":
		return &rbacv1.ClusterRole{}, nil
	case "rbac.authorization.k8s.io/v1/ClusterRoleBinding":
		return &rbacv1.ClusterRoleBinding{}, nil
	case "rbac.authorization.k8s.io/v1/Role":
		return &rbacv1.Role{}, nil
	case "rbac.authorization.k8s.io/v1/RoleBinding":
		return &rbacv1.RoleBinding{}, nil
	case "storage.k8s.io/v1/CSIDriver":
		return &storagev1.CSIDriver{}, nil
	case "storage.k8s.io/v1/StorageClass":
		return &storagev1.StorageClass{}, nil
	case "snapshot.storage.k8s.io/v1/VolumeSnapshotClass":
		return &snapv1.VolumeSnapshotClass{}, nil
	}
	return nil, fmt.Errorf("unexpected apiVersion/kind %s %s", apiVersion, kind)
}

var clusterScoped = map[string]bool{
	"Namespace": true, "ClusterRole": true, "ClusterRoleBinding": true,
	"CSIDriver": true, "StorageClass": true, "VolumeSnapshotClass": true,
}

// render runs kustomize on dir and decodes every object strictly.
func render(t *testing.T, dir string) []object {
	t.Helper()
	resMap, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize %s: %v", dir, err)
	}
	var objs []object
	seen := map[string]bool{}
	for _, r := range resMap.Resources() {
		y, err := r.AsYAML()
		if err != nil {
			t.Fatal(err)
		}
		o := object{apiVersion: r.GetApiVersion(), kind: r.GetKind(), namespace: r.GetNamespace(), name: r.GetName()}
		id := o.kind + " " + o.namespace + "/" + o.name
		if o.typed, err = newTyped(o.apiVersion, o.kind); err != nil {
			t.Errorf("%s: %v", id, err)
			continue
		}
		if err := yaml.UnmarshalStrict(y, o.typed); err != nil {
			t.Errorf("%s does not decode strictly as %s %s: %v\n%s", id, o.apiVersion, o.kind, err, y)
		}
		if seen[id] {
			t.Errorf("%s rendered twice", id)
		}
		seen[id] = true
		for _, msg := range validation.IsDNS1123Subdomain(o.name) {
			t.Errorf("%s: name: %s", id, msg)
		}
		if clusterScoped[o.kind] && o.namespace != "" {
			t.Errorf("%s: namespace %q on a cluster-scoped kind", id, o.namespace)
		}
		objs = append(objs, o)
	}
	return objs
}

// get returns the one object of kind and name, typed.
func get[T any](t *testing.T, objs []object, kind, name string) *T {
	t.Helper()
	for _, o := range objs {
		if o.kind == kind && o.name == name {
			v, ok := o.typed.(*T)
			if !ok {
				t.Fatalf("%s %s has type %T", kind, name, o.typed)
			}
			return v
		}
	}
	t.Fatalf("no %s %s in the rendered manifests", kind, name)
	return nil
}

func TestRenderMain(t *testing.T) {
	objs := render(t, ".")
	kinds := map[string]int{}
	for _, o := range objs {
		kinds[o.kind]++
		if o.kind != "Namespace" && !clusterScoped[o.kind] && o.namespace != "csi-ploop" {
			t.Errorf("%s %s in namespace %q, want csi-ploop", o.kind, o.name, o.namespace)
		}
	}
	for _, k := range []string{"Namespace", "CSIDriver", "DaemonSet", "ServiceAccount", "ClusterRole",
		"ClusterRoleBinding", "Role", "RoleBinding", "StorageClass", "VolumeSnapshotClass"} {
		if kinds[k] == 0 {
			t.Errorf("no %s rendered", k)
		}
	}
	if kinds["Pod"]+kinds["PersistentVolumeClaim"] != 0 {
		t.Error("the example belongs in example/, not in the main kustomization")
	}
}

func TestRenderExample(t *testing.T) {
	objs := render(t, "example")
	main := render(t, ".")
	pvc := get[corev1.PersistentVolumeClaim](t, objs, "PersistentVolumeClaim", "ploop-example")
	if sc := pvc.Spec.StorageClassName; sc == nil {
		t.Error("example PVC has no storageClassName")
	} else {
		get[storagev1.StorageClass](t, main, "StorageClass", *sc)
	}
	pod := get[corev1.Pod](t, objs, "Pod", "ploop-example")
	if len(pod.Spec.Volumes) != 1 || pod.Spec.Volumes[0].PersistentVolumeClaim == nil ||
		pod.Spec.Volumes[0].PersistentVolumeClaim.ClaimName != pvc.Name {
		t.Errorf("example pod does not use the example PVC: %+v", pod.Spec.Volumes)
	}
}
